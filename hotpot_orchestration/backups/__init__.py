"""Nightly PostgreSQL backups to S3, their verification and their retention.

Domain logic lives in plain modules (stream, snapshot, backup, verify, catalog, retention) that do not
import Dagster and are tested directly; assets, checks and schedules only wire them to resources.
"""

from __future__ import annotations

import dagster as dg

from hotpot_orchestration.backups.assets import BACKUP_RETRY, build_backup_assets
from hotpot_orchestration.backups.checks import build_backup_checks
from hotpot_orchestration.backups.schedules import build_nightly
from hotpot_orchestration.settings import Settings


def build_defs(settings: Settings, retry_policy: dg.RetryPolicy = BACKUP_RETRY) -> dg.Definitions:
    backup, retention = build_backup_assets(settings, retry_policy)
    job, schedule = build_nightly(backup, retention, settings)
    return dg.Definitions(
        assets=[backup, retention], asset_checks=build_backup_checks(), jobs=[job], schedules=[schedule]
    )
