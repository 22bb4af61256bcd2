"""Placeholders for capabilities whose issue is still open, so the UI shows every public name of the design.

Each one says in its description that it is not built yet, and fails loudly if launched.
"""

from __future__ import annotations

import dagster as dg

NOT_BUILT = "Not built yet (open issue #{issue}): launching it fails on purpose."


def _refuse(issue: int):
    raise dg.Failure(description=NOT_BUILT.format(issue=issue))


def planned_asset(name: str, issue: int, deps=(), group_name: str | None = None) -> dg.AssetsDefinition:
    @dg.asset(name=name, deps=list(deps), group_name=group_name, description=NOT_BUILT.format(issue=issue))
    def _planned() -> None:
        _refuse(issue)

    return _planned


def planned_job(name: str, issue: int) -> dg.JobDefinition:
    @dg.op(name=f"{name}_not_built")
    def _planned_op() -> None:
        _refuse(issue)

    @dg.job(name=name, description=NOT_BUILT.format(issue=issue))
    def _planned_job():
        _planned_op()

    return _planned_job


def planned_sensor(name: str, issue: int, job: dg.JobDefinition | None = None) -> dg.SensorDefinition:
    @dg.sensor(name=name, job=job, description=NOT_BUILT.format(issue=issue))
    def _planned_sensor(context):
        return dg.SkipReason(NOT_BUILT.format(issue=issue))

    return _planned_sensor
