"""Backup throughput on a >= 1 GB database, three ways, against the same PostgreSQL and S3 endpoint, one run.

  (a) floor  `pg_dump -Fc` with postgres_backup's compression piped into a bare boto3 `upload_fileobj`:
             no snapshot inventory, no hashing, no manifest, no Dagster.
  (b) seed   scripts/backup-database.sh: plain `pg_dump` to a file, `gzip` it, upload the .gz.
  (c) ours   the postgres_backup asset materialized through Dagster (`dg.materialize`) in a child process
             that loads the whole code location, as a run worker would; its peak RSS is read back from the
             kernel (wait4) and from the child itself.

Targets: c/a <= 1.25, c/b <= 0.6, peak RSS of the backing-up process < 250 MB. The time of the blocking
check's work (the archive streamed back through pg_restore and compared) is printed beside, not in (c).
Each way runs `--rounds` times, interleaved so that load from elsewhere on the machine hits all three
alike, each round starting with a different one; the best and the median time of each are compared, and
each round's (c) with the same round's floor, whose ratios vary least with the machine's load. The
database is the restore benchmark's generated restaurant data (bench/restore_rto.py), so both benchmarks
measure the same realistic rows.

    .venv/bin/python bench/backup_throughput.py [--gigabytes 1.0] [--rounds 5]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from restore_rto import DATABASE, generate

from hotpot_devstack import Postgres, S3Server
from hotpot_orchestration.backups.backup import PgDump
from hotpot_orchestration.backups.catalog import delete_backup, load_backup
from hotpot_orchestration.backups.verify import verify_backup
from hotpot_orchestration.platform.pg import PgTarget

BUCKET = "thehotpotspot-backups"
PREFIX = "database/"
CHILD_FLAG = "--materialize-in-this-process"


def floor(postgres: Postgres, client, compression: str) -> tuple[float, int]:
    target = PgTarget.from_url(postgres.url_for(DATABASE))
    started = time.perf_counter()
    dump = subprocess.Popen(
        [str(postgres.bin_dir / "pg_dump"), "--format=custom", f"--compress={compression}"],
        stdout=subprocess.PIPE,
        env=target.env(),
    )
    client.upload_fileobj(dump.stdout, BUCKET, "bench/floor.dump")
    if dump.wait() != 0:
        raise RuntimeError("pg_dump failed")
    seconds = time.perf_counter() - started
    return seconds, client.head_object(Bucket=BUCKET, Key="bench/floor.dump")["ContentLength"]


def seed(postgres: Postgres, client, work: Path) -> tuple[float, int]:
    target = PgTarget.from_url(postgres.url_for(DATABASE))
    plain = work / "backup.sql"
    started = time.perf_counter()
    subprocess.run([str(postgres.bin_dir / "pg_dump"), "--file", str(plain)], env=target.env(), check=True)
    subprocess.run(["gzip", str(plain)], check=True)
    client.upload_file(str(plain) + ".gz", BUCKET, "bench/seed.sql.gz")
    seconds = time.perf_counter() - started
    size = os.path.getsize(str(plain) + ".gz")
    os.unlink(str(plain) + ".gz")
    return seconds, size


def ours(postgres: Postgres, s3: S3Server) -> dict:
    env = dict(
        os.environ,
        HOTPOT_DATABASE_URL=postgres.url_for(DATABASE),
        HOTPOT_PG_BIN_DIR=str(postgres.bin_dir),
        HOTPOT_BACKUP_BUCKET=BUCKET,
        HOTPOT_BACKUP_PREFIX=PREFIX,
        **s3.env(),
    )
    started = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, __file__, CHILD_FLAG], env=env, stdout=subprocess.PIPE, text=True
    )
    output = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise RuntimeError(f"the materialization failed (exit {child.returncode})")
    report = json.loads(output.strip().splitlines()[-1])
    report["process_seconds"] = time.perf_counter() - started
    report["wait4_maxrss_mb"] = usage.ru_maxrss / 1024
    return report


def materialize_in_this_process() -> None:
    """The child: load the code location and materialize the latest partition of postgres_backup."""
    import resource

    import dagster as dg

    from hotpot_orchestration.definitions import defs

    asset = defs.resolve_assets_def("postgres_backup")
    partition = asset.partitions_def.get_last_partition_key()
    instance = dg.DagsterInstance.ephemeral()
    started = time.perf_counter()
    result = dg.materialize([asset], partition_key=partition, instance=instance)
    seconds = time.perf_counter() - started
    metadata = {
        key: value.value
        for key, value in result.asset_materializations_for_node("postgres_backup")[0].metadata.items()
    }
    report = {
        "seconds": seconds,
        "self_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "dump_bytes": metadata["dump_bytes"],
        "manifest_key": metadata["manifest_key"],
        "compression_ratio": metadata["compression_ratio"],
        "rows": metadata["rows"],
    }
    print(json.dumps(report))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gigabytes", type=float, default=1.0, help="size of the generated database")
    parser.add_argument("--rounds", type=int, default=5, help="runs of each way")
    args = parser.parse_args()

    with (
        Postgres() as postgres,
        S3Server() as s3,
        tempfile.TemporaryDirectory(prefix="backup-bench-") as work,
    ):
        started = time.perf_counter()
        size = generate(postgres, args.gigabytes)
        print(
            f"database {DATABASE}: {size / 1e9:.2f} GB (generated in {time.perf_counter() - started:.0f} s)"
        )
        s3.create_bucket(BUCKET)
        client = s3.client()
        compression = PgDump.in_dir(postgres.bin_dir).compression
        a, b, c = [], [], []

        def run_ours() -> None:
            c.append(ours(postgres, s3))
            if len(c) > 1:
                # The floor's and the seed's objects are overwritten each round; this keeps the S3 server
                # holding as much as theirs do (moto keeps a multipart object's parts in memory).
                delete_backup(client, BUCKET, load_backup(client, BUCKET, PREFIX, c[-2]["manifest_key"]))

        ways = [
            lambda: a.append(floor(postgres, client, compression)),
            run_ours,
            lambda: b.append(seed(postgres, client, Path(work))),
        ]
        for round_number in range(1, args.rounds + 1):
            # Each round starts with a different way: whichever runs just after the seed (which writes and
            # deletes a plain dump of hundreds of MB) is slowed by the kernel's work on those files.
            shift = (round_number - 1) % len(ways)
            for way in ways[shift:] + ways[:shift]:
                # Nor is the writeback of one way's dirty pages left to land in the next one's time.
                os.sync()
                way()
            print(
                f"round {round_number}: floor {a[-1][0]:.1f} s, seed {b[-1][0]:.1f} s, "
                f"postgres_backup {c[-1]['seconds']:.1f} s (c/a {c[-1]['seconds'] / a[-1][0]:.2f})",
                flush=True,
            )
        best_a, best_b = min(a), min(b)
        best_c = min(c, key=lambda report: report["seconds"])
        backup = load_backup(client, BUCKET, PREFIX, c[-1]["manifest_key"])
        verdict = verify_backup(client, BUCKET, backup, bin_dir=postgres.bin_dir, endpoint=s3.endpoint_url)
        if not verdict.ok:
            raise RuntimeError(verdict.detail)
        peak_rss = max(max(report["self_maxrss_mb"], report["wait4_maxrss_mb"]) for report in c)

        print(f"\ncompression: {compression}; database {size:,} bytes; {best_c['rows']:,} rows")
        print(f"(a) floor, pg_dump | upload_fileobj: {best_a[0]:7.1f} s  {best_a[1]:>14,} bytes")
        print(f"(b) seed, dump + gzip + upload:      {best_b[0]:7.1f} s  {best_b[1]:>14,} bytes")
        print(
            f"(c) postgres_backup via Dagster:     {best_c['seconds']:7.1f} s  "
            f"{best_c['dump_bytes']:>14,} bytes  (child process {best_c['process_seconds']:.1f} s, "
            "with interpreter start and code location load)"
        )
        print(
            f"    blocking check of the last round's backup (read back in full): {verdict.seconds:.1f} s, "
            f"{verdict.rows:,} rows matched"
        )
        median_a = statistics.median(seconds for seconds, _ in a)
        median_b = statistics.median(seconds for seconds, _ in b)
        median_c = statistics.median(report["seconds"] for report in c)
        ratio_a, ratio_b = best_c["seconds"] / best_a[0], best_c["seconds"] / best_b[0]
        paired = statistics.median(
            report["seconds"] / seconds for report, (seconds, _) in zip(c, a, strict=True)
        )
        print(
            f"c/a = {ratio_a:.2f} best, {median_c / median_a:.2f} median, {paired:.2f} median of the rounds' "
            "own ratios  (target <= 1.25)"
        )
        print(f"c/b = {ratio_b:.2f} best, {median_c / median_b:.2f} median  (target <= 0.60)")
        print(
            f"peak RSS of the backing-up process: {peak_rss:.0f} MB (target < 250 MB; "
            + ", ".join(f"self {r['self_maxrss_mb']:.0f} / wait4 {r['wait4_maxrss_mb']:.0f}" for r in c)
            + ")"
        )


if __name__ == "__main__":
    if sys.argv[1:] == [CHILD_FLAG]:
        materialize_in_this_process()
    else:
        main()
