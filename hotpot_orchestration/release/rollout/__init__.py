"""Staged canary and blue-green releases judged on real metrics, and rollback.

The plan (HOTPOT_ROLLOUT_PLAN's file, else the packaged rollout_plan.yaml) is validated when the code
location loads and generates one asset per step, `canary_weight_<W>`, between `api_image` and
`production_release`, all in `canary_release_job`. `blue_green_release_job` runs the blue-green assets
`blue_green_deploy_idle` -> `blue_green_switch` -> `blue_green_scale_down_old`, also downstream of
`api_image`; both jobs are always defined, and a release is one or the other.
"""

from __future__ import annotations

import dagster as dg

from hotpot_orchestration.pitr.barman import BarmanCloud
from hotpot_orchestration.release.rollout.approval import APPROVAL_SPEC
from hotpot_orchestration.release.rollout.blue_green import blue_green_assets, blue_green_job
from hotpot_orchestration.release.rollout.canary import canary_assets, canary_job
from hotpot_orchestration.release.rollout.gates import WalArchiveWatch
from hotpot_orchestration.release.rollout.plan import RolloutPlan, load_plan
from hotpot_orchestration.release.rollout.resources import CanaryPrometheusResource, traffic_router_resource
from hotpot_orchestration.release.rollout.rollback import rollback_job
from hotpot_orchestration.release.rollout.sensor import release_failure_sensor
from hotpot_orchestration.settings import Settings


def build_rollout_defs(
    plan: RolloutPlan, ui_url: str, wal_archive: WalArchiveWatch | None = None
) -> dg.Definitions:
    """Assets, jobs and the sensor for `plan` (a refused gate links to `ui_url`, the Dagster UI); the
    resources come from the caller. The gates look at WAL archiving in `wal_archive` (None: they do not)."""
    return dg.Definitions(
        assets=[
            *canary_assets(plan, ui_url, wal_archive),
            *blue_green_assets(plan, ui_url, wal_archive),
            APPROVAL_SPEC,
        ],
        jobs=[canary_job(plan), blue_green_job, rollback_job],
        sensors=[release_failure_sensor],
    )


def wal_archive_watch(settings: Settings) -> WalArchiveWatch | None:
    """The archive the pitr concern writes (physical_backup, the wal_archive check), HOTPOT_PITR_PREFIX
    defaulting to pitr/; None with HOTPOT_RELEASE_WAL_GATE=false, for a database whose WAL is not archived
    there (releases then say the WAL gate did not look)."""
    if not settings.release_wal_gate:
        return None
    barman = BarmanCloud(
        bucket=settings.backup_bucket, prefix=settings.pitr_prefix, server_name=settings.barman_server_name
    )
    return WalArchiveWatch(barman, settings.wal_archive_max_age_seconds)


def build_defs(settings: Settings) -> dg.Definitions:
    return dg.Definitions.merge(
        build_rollout_defs(load_plan(settings.rollout_plan), settings.ui_url, wal_archive_watch(settings)),
        dg.Definitions(
            resources={
                "traffic_router": traffic_router_resource(settings),
                "canary_prometheus": CanaryPrometheusResource(url=settings.prometheus_url),
            }
        ),
    )
