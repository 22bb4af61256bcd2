"""The code location: every concern's assets, jobs, schedules and sensors, with the shared resources."""

from __future__ import annotations

import dagster as dg

from hotpot_orchestration import backups, operations, pitr, release, restores
from hotpot_orchestration.platform.resources import BackupStorageResource, LockedResource, PostgresResource
from hotpot_orchestration.settings import Settings, load_settings


def build_resources(settings: Settings) -> dict[str, dg.ConfigurableResource]:
    pg_bin_dir = str(settings.pg_bin_dir) if settings.pg_bin_dir else None
    # Drills default to the backed-up database's server (the scratch database gets its own name).
    drill_url = "HOTPOT_DRILL_DATABASE_URL" if settings.drill_database_url else "HOTPOT_DATABASE_URL"
    return {
        "postgres": PostgresResource(url=dg.EnvVar("HOTPOT_DATABASE_URL"), pg_bin_dir=pg_bin_dir),
        "drill_postgres": PostgresResource(url=dg.EnvVar(drill_url), pg_bin_dir=pg_bin_dir),
        "backup_storage": BackupStorageResource(
            bucket=settings.backup_bucket,
            prefix=settings.backup_prefix,
            endpoint_url=settings.aws_endpoint_url,
            region=settings.aws_region,
            kms_key_id=settings.backup_kms_key_id,
            database=settings.database_name,
        ),
    }


# The one resource a run is meant to be given at launch: the image a release deploys.
RUN_CONFIGURED_RESOURCES = frozenset({"release_image"})


def _with_locked_resources(defs: dg.Definitions) -> dg.Definitions:
    resources = {
        key: resource if key in RUN_CONFIGURED_RESOURCES else LockedResource(resource)
        for key, resource in (defs.resources or {}).items()
    }
    return dg.Definitions(
        assets=defs.assets,
        asset_checks=defs.asset_checks,
        schedules=defs.schedules,
        sensors=defs.sensors,
        jobs=defs.jobs,
        resources=resources,
        executor=defs.executor,
        loggers=defs.loggers,
        metadata=defs.metadata,
    )


def build_definitions(settings: Settings) -> dg.Definitions:
    return _with_locked_resources(
        dg.Definitions.merge(
            backups.build_defs(settings),
            restores.build_defs(settings),
            pitr.build_defs(settings),
            release.build_defs(settings),
            operations.build_defs(settings),
            dg.Definitions(resources=build_resources(settings)),
        )
    )


defs = build_definitions(load_settings())
