"""Time to restore a >= 1 GB database: the seed's restore script against restore_drill, in one run.

Both read the same database's backup from the same S3 endpoint into the same PostgreSQL server:

  seed   scripts/restore-database.sh: download the gzipped plain dump, gunzip it, `psql < file` into an
         empty database. No check of any kind.
  drill  the restore_drill asset materialized through Dagster: download with SHA-256 check, pg_restore
         --jobs into a scratch database, verification against the manifest (exact row count of every table,
         schema against the archive, sequences, extensions, large objects), scratch database dropped.

Target: drill <= 0.7x seed (best of two alternating rounds, each round printed). Needs about 3x the
database size free in the temp directory.

    .venv/bin/python bench/restore_rto.py [--gigabytes 1.0]
"""

import argparse
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import dagster as dg

from hotpot_devstack import Postgres, S3Server
from hotpot_devstack.backups import take_verified_backup
from hotpot_orchestration.platform.pg import PgTarget
from hotpot_orchestration.platform.resources import BackupStorageResource, PostgresResource
from hotpot_orchestration.restores import restore_drill

DATABASE = "thehotpotspot"
BUCKET = "thehotpotspot-backups"
PREFIX = "database/"
SEED_KEY = "seed/thehotpotspot.sql.gz"
ROUNDS = 2

SCHEMA = """
CREATE SCHEMA menu;
CREATE SCHEMA sales;
CREATE SCHEMA kitchen;
CREATE TYPE sales.order_status AS ENUM ('placed', 'cooking', 'served', 'paid', 'cancelled');
CREATE TYPE sales.payment_method AS ENUM ('card', 'cash', 'qr', 'voucher');
CREATE TABLE menu.categories (id serial PRIMARY KEY, name text NOT NULL UNIQUE);
CREATE TABLE menu.menu_items (
    id serial PRIMARY KEY,
    category_id integer NOT NULL REFERENCES menu.categories (id),
    name text NOT NULL UNIQUE,
    price_cents integer NOT NULL CHECK (price_cents > 0),
    spice_level smallint NOT NULL CHECK (spice_level BETWEEN 0 AND 5)
);
CREATE TABLE sales.customers (
    id bigserial PRIMARY KEY,
    name text NOT NULL,
    email text NOT NULL UNIQUE,
    phone text,
    created_at timestamptz NOT NULL
);
CREATE TABLE sales.orders (
    id bigserial PRIMARY KEY,
    customer_id bigint REFERENCES sales.customers (id),
    table_number smallint,
    status sales.order_status NOT NULL,
    placed_at timestamptz NOT NULL,
    note text
);
CREATE TABLE sales.order_items (
    id bigserial PRIMARY KEY,
    order_id bigint NOT NULL REFERENCES sales.orders (id),
    menu_item_id integer NOT NULL REFERENCES menu.menu_items (id),
    quantity smallint NOT NULL,
    unit_price_cents integer NOT NULL,
    comment text
);
CREATE TABLE sales.payments (
    id bigserial PRIMARY KEY,
    order_id bigint NOT NULL REFERENCES sales.orders (id),
    method sales.payment_method NOT NULL,
    amount_cents integer NOT NULL,
    tip_cents integer NOT NULL,
    card_last4 text,
    paid_at timestamptz NOT NULL
);
CREATE TABLE kitchen.events (
    id bigserial PRIMARY KEY,
    order_id bigint NOT NULL,
    station text NOT NULL,
    happened_at timestamptz NOT NULL,
    details jsonb NOT NULL
);
"""

# One "unit" of generated data is about 100 MB on disk, indexes included.
UNIT = """
INSERT INTO sales.customers (name, email, phone, created_at)
SELECT (ARRAY['Anna','Boris','Chen','Dana','Emil','Fatima','Gleb','Hana','Ivan','Jun'])[(1 + g % 10)::int]
         || ' ' || initcap(substr(md5(g::text), 1, 8)),
       'guest' || g || '.' || substr(md5(g::text), 9, 6) || '@example.com',
       CASE WHEN g % 3 = 0 THEN NULL ELSE '+7 9' || lpad((g * 7919 % 1000000000)::text, 9, '0') END,
       timestamptz '2024-01-01' + (g % 63072000) * interval '1 second'
FROM generate_series({c0}::bigint, {c1}) g;
INSERT INTO sales.orders (customer_id, table_number, status, placed_at, note)
SELECT CASE WHEN g % 5 = 0 THEN NULL ELSE 1 + (g * 31 % {customers}) END,
       (g % 40 + 1)::smallint,
       (ARRAY['placed','cooking','served','paid','paid','paid','cancelled']::sales.order_status[])
         [(1 + g % 7)::int],
       timestamptz '2024-01-01' + g * interval '7 seconds',
       CASE WHEN g % 4 = 0 THEN 'table ' || (g % 40 + 1) || ': ' || md5(g::text) END
FROM generate_series({o0}::bigint, {o1}) g;
INSERT INTO sales.order_items (order_id, menu_item_id, quantity, unit_price_cents, comment)
SELECT 1 + g / 3, 1 + (g * 13 % 120), (1 + g % 4)::smallint, 250 + (g * 37 % 2500),
       CASE WHEN g % 6 = 0
            THEN (ARRAY['extra spicy','no coriander','less oil','sauce on the side'])[(1 + g % 4)::int] END
FROM generate_series({i0}::bigint, {i1}) g;
INSERT INTO sales.payments (order_id, method, amount_cents, tip_cents, card_last4, paid_at)
SELECT g, (ARRAY['card','card','cash','qr','voucher'])[(1 + g % 5)::int]::sales.payment_method,
       1000 + (g * 7919 % 20000), g * 13 % 800,
       CASE WHEN g % 5 < 2 THEN lpad((g * 31 % 10000)::text, 4, '0') END,
       timestamptz '2024-01-01' + g * interval '7 seconds' + interval '45 minutes'
FROM generate_series({o0}::bigint, {o1}) g;
INSERT INTO kitchen.events (order_id, station, happened_at, details)
SELECT 1 + g / 2, (ARRAY['broth','grill','wok','cold','pass'])[(1 + g % 5)::int],
       timestamptz '2024-01-01' + g * interval '3 seconds',
       jsonb_build_object('cook', 'cook-' || (g % 17), 'step', g % 4, 'temp_c', 60 + g % 40,
                          'ticket', substr(md5(g::text), 1, 10))
FROM generate_series({e0}::bigint, {e1}) g;
"""
CUSTOMERS, ORDERS = 40_000, 200_000  # per unit; 3 items and 2 kitchen events per order
INDEXES = """
CREATE INDEX orders_placed_at_idx ON sales.orders (placed_at);
CREATE INDEX orders_customer_idx ON sales.orders (customer_id);
CREATE INDEX order_items_order_idx ON sales.order_items (order_id);
CREATE INDEX payments_order_idx ON sales.payments (order_id);
CREATE INDEX events_order_idx ON kitchen.events (order_id, happened_at);
SELECT lo_from_bytea(0, convert_to(repeat('menu photo ', 1000), 'UTF8'));
"""


def generate(postgres: Postgres, gigabytes: float) -> int:
    postgres.create_database(DATABASE)
    with postgres.connect(DATABASE) as conn:
        conn.execute(SCHEMA)
        conn.execute(
            "INSERT INTO menu.categories (name) SELECT 'category ' || g FROM generate_series(1, 12) g"
        )
        conn.execute(
            "INSERT INTO menu.menu_items (category_id, name, price_cents, spice_level)"
            " SELECT 1 + g % 12, 'dish ' || g, 250 + g * 37 % 2500, g % 6 FROM generate_series(1, 120) g"
        )
        unit = 0
        while conn.execute("SELECT pg_database_size(current_database())").fetchone()[0] < gigabytes * 0.75e9:
            # Indexes come last (as in any restore); data alone reaches ~3/4 of the final size.
            conn.execute(
                UNIT.format(
                    customers=(unit + 1) * CUSTOMERS,
                    c0=unit * CUSTOMERS + 1,
                    c1=(unit + 1) * CUSTOMERS,
                    o0=unit * ORDERS + 1,
                    o1=(unit + 1) * ORDERS,
                    i0=unit * ORDERS * 3,
                    i1=(unit + 1) * ORDERS * 3 - 1,
                    e0=unit * ORDERS * 2,
                    e1=(unit + 1) * ORDERS * 2 - 1,
                )
            )
            unit += 1
        conn.execute(INDEXES)
        conn.execute("VACUUM ANALYZE")
        return conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]


def run(argv: list[str], **kwargs) -> None:
    subprocess.run(argv, check=True, **kwargs)


def seed_backup(postgres: Postgres, client, work: Path) -> int:
    """What scripts/backup-database.sh stored: a plain dump, gzipped, uploaded."""
    plain = work / "thehotpotspot.sql"
    target = PgTarget.from_url(postgres.url_for(DATABASE))
    run([str(postgres.bin_dir / "pg_dump"), "--file", str(plain)], env=target.env())
    run(["gzip", str(plain)])
    client.upload_file(str(plain) + ".gz", BUCKET, SEED_KEY)
    size = Path(str(plain) + ".gz").stat().st_size
    os.unlink(str(plain) + ".gz")
    return size


def seed_restore(postgres: Postgres, client, work: Path) -> dict[str, float]:
    """scripts/restore-database.sh, into an empty database on the same server."""
    postgres.create_database("seed_restore")
    target = PgTarget.from_url(postgres.url_for("seed_restore"))
    gz = work / "thehotpotspot.sql.gz"
    times = {}
    started = time.perf_counter()
    client.download_file(BUCKET, SEED_KEY, str(gz))  # aws s3 cp
    times["download"] = time.perf_counter() - started
    run(["gunzip", str(gz)])
    times["gunzip"] = time.perf_counter() - started - times["download"]
    with open(work / "thehotpotspot.sql", "rb") as script:
        run(
            [str(postgres.bin_dir / "psql"), "--quiet"],
            stdin=script,
            stdout=subprocess.DEVNULL,
            env=target.env(),
        )
    times["psql"] = time.perf_counter() - started - times["download"] - times["gunzip"]
    times["total"] = time.perf_counter() - started
    os.unlink(work / "thehotpotspot.sql")
    postgres.drop_database("seed_restore")
    return times


def drill(postgres: Postgres, s3: S3Server) -> tuple[float, dict]:
    resources = {
        "postgres": PostgresResource(url=postgres.url_for(DATABASE), pg_bin_dir=str(postgres.bin_dir)),
        "drill_postgres": PostgresResource(url=postgres.url, pg_bin_dir=str(postgres.bin_dir)),
        "backup_storage": BackupStorageResource(
            bucket=BUCKET, prefix=PREFIX, endpoint_url=s3.endpoint_url, region=s3.region
        ),
    }
    started = time.perf_counter()
    result = dg.materialize([restore_drill], resources=resources, instance=dg.DagsterInstance.ephemeral())
    seconds = time.perf_counter() - started
    (materialization,) = result.asset_materializations_for_node("restore_drill")
    return seconds, {key: value.value for key, value in materialization.metadata.items()}


def checkpoint(postgres: Postgres) -> None:
    """Neither restore pays for the other's dirty pages."""
    with postgres.connect() as conn:
        conn.execute("CHECKPOINT")
    run(["sync"])


def print_round(number: int, seed: dict[str, float], drill_seconds: float, metadata: dict) -> None:
    print(
        f"round {number}  seed way      {seed['total']:6.1f}s  "
        f"download {seed['download']:.1f}s, gunzip {seed['gunzip']:.1f}s, psql {seed['psql']:.1f}s"
    )
    print(
        f"round {number}  restore_drill {drill_seconds:6.1f}s  "
        f"download+SHA-256 {metadata['download_seconds']:.1f}s, "
        f"pg_restore {metadata['restore_seconds']:.1f}s, verify {metadata['verify_seconds']:.1f}s, "
        f"Dagster and scratch database {drill_seconds - metadata['rto_seconds']:.1f}s",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--gigabytes", type=float, default=1.0, help="database size to generate (default 1.0)"
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hotpot-restore-bench-"))
    try:
        with Postgres() as postgres, S3Server() as s3:
            os.environ.update(AWS_ACCESS_KEY_ID=s3.access_key, AWS_SECRET_ACCESS_KEY=s3.secret_key)
            s3.create_bucket(BUCKET)
            client = s3.client()
            print(f"generating a database of at least {args.gigabytes} GB ...", flush=True)
            started = time.perf_counter()
            size = generate(postgres, args.gigabytes)
            print(f"  {size / 1e9:.2f} GB in {time.perf_counter() - started:.0f}s", flush=True)
            seed_bytes = seed_backup(postgres, client, work)
            dump_bytes = take_verified_backup(postgres, s3, BUCKET, DATABASE, PREFIX).manifest["dump_bytes"]
            print(f"backups: seed plain+gzip {seed_bytes / 1e6:.0f} MB, backup {dump_bytes / 1e6:.0f} MB")
            checkpoint(postgres)

            # Alternating rounds: a burst of load from elsewhere on the machine hits both ways alike.
            seeds, drills = [], []
            for round_number in range(1, ROUNDS + 1):
                seed = seed_restore(postgres, client, work)
                checkpoint(postgres)
                drill_seconds, metadata = drill(postgres, s3)
                checkpoint(postgres)
                seeds.append(seed["total"])
                drills.append(drill_seconds)
                print_round(round_number, seed, drill_seconds, metadata)
            tables, rows = metadata["tables_verified"], metadata["rows_verified"]
            print()
            print(f"database: {size / 1e9:.2f} GB, {tables} tables and {rows:,} rows verified by every drill")
            print(f"seed way (download, gunzip, psql < file): best {min(seeds):.1f}s")
            print(f"restore_drill incl. verification:         best {min(drills):.1f}s")
            print(
                f"ratio drill / seed: {min(drills) / min(seeds):.2f}x (best of {ROUNDS}); per round: "
                + ", ".join(f"{d / s:.2f}x" for d, s in zip(drills, seeds, strict=True))
                + "   target: <= 0.70x"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
