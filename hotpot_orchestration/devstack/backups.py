"""A verified backup of a devstack database, as the nightly job leaves one, for drills in tests and benches.

Takes the backup and runs the archive check, recording its verdict in the manifest, without Dagster.
"""

from __future__ import annotations

from datetime import UTC, datetime

from hotpot_orchestration.backups.backup import take_backup
from hotpot_orchestration.backups.catalog import Backup, latest_backup, record_verification
from hotpot_orchestration.backups.verify import verify_backup
from hotpot_orchestration.platform.pg import PgTarget

from .postgres import Postgres
from .s3 import S3Server


def take_verified_backup(postgres: Postgres, s3: S3Server, bucket: str, dbname: str, prefix: str) -> Backup:
    client = s3.client()
    take_backup(
        target=PgTarget.from_url(postgres.url_for(dbname)),
        url_variable="HOTPOT_DATABASE_URL",
        bin_dir=postgres.bin_dir,
        connect_s3=lambda: client,
        endpoint=s3.endpoint_url,
        bucket=bucket,
        prefix=prefix,
        partition=datetime.now(UTC).strftime("%Y-%m-%d"),
        encryption={},
        log=lambda message: None,
    )
    backup = latest_backup(client, bucket, prefix, verified_only=False, database=dbname)
    verdict = verify_backup(client, bucket, backup, bin_dir=postgres.bin_dir, endpoint=s3.endpoint_url)
    if not verdict.ok:
        raise RuntimeError(f"the backup of {dbname} did not verify: {verdict.detail}")
    record_verification(client, bucket, backup, ok=True, detail=verdict.detail, extra_args={})
    return latest_backup(client, bucket, prefix, database=dbname)
