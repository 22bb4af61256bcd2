"""A release's image, pushed for real to a test registry."""

from __future__ import annotations

import uuid

from hotpot_orchestration.release.image.resource import ReleaseImageResource


def pushed_release_image(registry, tag: str = "v2") -> ReleaseImageResource:
    """An image pushed under `tag` to a repository of its own in `registry`, as a release is given it."""
    repository = f"thehotpotspot/api-{uuid.uuid4().hex[:8]}"
    return ReleaseImageResource(
        tag=tag,
        digest=registry.push_test_image(repository, tag),
        repository=repository,
        registry=registry.host,
    )


def allow_two_runs_in_one_process(monkeypatch) -> None:
    """A release run on a thread and rollback_job on another, in one process: at each run's start Dagster
    calls logging.config.dictConfig, even for an instance with no python_logs configured, and dictConfig
    takes logging's module lock and then each handler's lock while the other run's thread logs. Under load
    one such start hung for 300 s in a handler's lock. Production runs are processes of their own. With no
    python_logs configured there is nothing to configure, so the call is skipped."""
    import dagster as dg

    configured = dg.DagsterInstance.get_yaml_python_handlers

    def handlers(instance):
        return configured(instance) if instance.get_python_log_dagster_handler_config() else []

    monkeypatch.setattr(dg.DagsterInstance, "get_yaml_python_handlers", handlers)
