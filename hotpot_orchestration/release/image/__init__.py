"""The API image: gated build, immutable push, and the sensor that watches the registry for new tags.

The work is in plain modules (`publish`, `gates`, `builders`, `kaniko`, `watch`, `policy`, and the registry
client in `hotpot_orchestration.platform.registry`); this module only adapts them to Dagster.
"""

from collections.abc import Iterator
from typing import Any

import dagster as dg

from hotpot_orchestration.platform.kubernetes import RELEASE_POD_TAGS
from hotpot_orchestration.release.image.resource import (
    ImageBuildResource,
    ImageTagPolicyResource,
    RegistryNotConfigured,
    RegistryResource,
    ReleaseImageResource,
)
from hotpot_orchestration.release.rollout.releases import (
    CANARY_JOB,
    GROUP,
    IMAGE_ASSET,
    PRODUCTION_ASSET,
    RELEASE_QUEUE_TAG,
)
from hotpot_orchestration.settings import Settings

API_IMAGE = dg.AssetKey(IMAGE_ASSET)
BUILD_JOB = "build_image_job"
TAG_SENSOR = "new_image_tag_sensor"
RUN_TAG_IMAGE_TAG = "hotpot/image-tag"
RUN_TAG_IMAGE_DIGEST = "hotpot/image-digest"
RUN_TAG_IMAGE_REPOSITORY = "hotpot/image-repository"

__all__ = [
    "ImageBuildResource",
    "ImageTagPolicyResource",
    "RegistryResource",
    "ReleaseImageResource",
    "api_image",
    "build_defs",
    "build_image_job",
    "new_image_tag_sensor",
]


def _code_block(text: str) -> dg.MetadataValue:
    return dg.MetadataValue.md(f"```\n{text or '(no output)'}\n```")


def _gate_observation(asset_key: dg.AssetKey, result) -> dg.AssetObservation:
    return dg.AssetObservation(
        asset_key=asset_key,
        metadata={
            "gate": result.name,
            "status": result.status,
            "command": result.command,
            "exit_code": result.exit_code if result.exit_code is not None else -1,
            "duration_seconds": round(result.duration_seconds, 3),
            "output_tail": _code_block(result.output_tail),
        },
    )


def _reported_gates(context: dg.AssetExecutionContext, session) -> Iterator[dg.AssetObservation]:
    """Runs the session's gates, logging each and reporting it as an observation as soon as it ends."""
    for result in session.gates():
        line = f"gate {result.name}: {result.status} in {result.duration_seconds:.1f} s"
        if result.status in ("failed", "timed out"):
            context.log.error(f"{line}\n{result.output_tail}")
        else:
            context.log.info(line)
        yield _gate_observation(context.asset_key, result)


def _gate_failure(failed) -> dg.Failure:
    """The step's failure for a `GateFailed`: the gate, its command and its output's tail."""
    return dg.Failure(
        description=f"gate {failed.result.name!r} {failed.result.status}: the image was not built",
        metadata={
            "gate": failed.result.name,
            "command": failed.result.command,
            "exit_code": failed.result.exit_code if failed.result.exit_code is not None else -1,
            "output_tail": _code_block(failed.result.output_tail),
            "gates": ", ".join(f"{r.name}: {r.status}" for r in failed.results),
        },
        allow_retries=False,
    )


def _build_metadata(build) -> dict[str, Any]:
    """What api_image's materialization records about an `ImageBuild`."""
    return {
        "image": build.reference,
        "digest": build.digest,
        "tag": build.tag,
        "repository": f"{build.registry}/{build.repository}",
        "size_bytes": build.size_bytes,
        "build_seconds": build.build_seconds,
        "commit": build.commit,
        "commit_time": dg.MetadataValue.timestamp(float(build.commit_time)),
        "builder": build.builder,
        "pushed": build.pushed,
        "pushed_tags": ", ".join(build.pushed_tags) or "none (the commit tag already held this digest)",
        "gates": ", ".join(f"{g.name}: {g.status} ({g.duration_seconds:.1f} s)" for g in build.gates)
        or "none",
        "dirty_checkout": build.dirty_checkout,
    }


@dg.asset(
    key=API_IMAGE,
    group_name=GROUP,
    kinds={"oci"},
    # No op config at all: without a schema Dagster would accept any `ops.api_image.config` at launch.
    config_schema={},
    description=(
        "The API image, built from HOTPOT_APP_SOURCE after its CI gates pass, pushed to "
        "HOTPOT_REGISTRY/HOTPOT_IMAGE_REPOSITORY as the commit's short SHA (immutable) and `latest`."
    ),
)
def api_image(
    context: dg.AssetExecutionContext,
    registry: RegistryResource,
    image_build: ImageBuildResource,
):
    """The gates are the checkout's own gates file, and only that: a run's config cannot name commands, since
    they run with the run's environment and credentials. Each gate is reported as an observation of
    `api_image` as soon as it ends; a failed gate fails the step with its output's tail, and nothing is
    built."""
    from pathlib import Path

    from hotpot_orchestration.platform.registry import RegistryError
    from hotpot_orchestration.release.image.builders import BuilderUnavailable, BuildFailed
    from hotpot_orchestration.release.image.gates import GateConfigError, GateFailed
    from hotpot_orchestration.release.image.publish import BuildSession
    from hotpot_orchestration.release.image.source import SourceError

    if not image_build.source:
        raise dg.Failure(
            description="HOTPOT_APP_SOURCE is not set: point it at a checkout of the API's source "
            "(a Dockerfile and gates.yaml at its top)",
            allow_retries=False,
        )
    try:
        client = registry.client()
        with (
            client,
            BuildSession(
                source=Path(image_build.source),
                registry=client,
                repository=registry.repository,
                builder=image_build.make_builder(plain_http=client.base_url.startswith("http://")),
                sha_length=image_build.sha_length,
                work_root=Path(image_build.work_dir) if image_build.work_dir else None,
                log=context.log.info,
            ) as session,
        ):
            yield from _reported_gates(context, session)
            build = session.build_and_push()
    except GateFailed as failed:
        raise _gate_failure(failed) from None
    except (
        BuilderUnavailable,
        BuildFailed,
        GateConfigError,
        RegistryError,
        RegistryNotConfigured,
        SourceError,
    ) as error:
        raise dg.Failure(description=str(error), allow_retries=False) from error
    yield dg.MaterializeResult(metadata=_build_metadata(build), data_version=dg.DataVersion(build.digest))


build_image_job = dg.define_asset_job(
    BUILD_JOB,
    selection=dg.AssetSelection.assets(api_image),
    description="Run the source's CI gates, build the API image, push it as its commit tag and `latest`.",
    tags=RELEASE_POD_TAGS,
)


def production_digest(instance: dg.DagsterInstance) -> str | None:
    """The digest production runs: the `digest` metadata of the latest `production_release`, if any."""
    event = instance.get_latest_materialization_event(dg.AssetKey(PRODUCTION_ASSET))
    materialization = event.asset_materialization if event else None
    if materialization is None:
        return None
    value = materialization.metadata.get("digest")
    value = getattr(value, "value", value)
    return str(value) if value else None


def watch_registry(
    context: dg.SensorEvaluationContext,
    registry: RegistryResource,
    image_tag_policy: ImageTagPolicyResource,
) -> dg.SensorResult:
    from hotpot_orchestration.release.image.watch import WatchState, evaluate

    try:
        client = registry.client()
        policy = image_tag_policy.policy()
    except (RegistryNotConfigured, ValueError) as error:
        return dg.SensorResult(skip_reason=str(error))
    with client:
        result = evaluate(
            client,
            registry.repository,
            policy,
            WatchState.from_cursor(context.cursor),
            production_digest(context.instance),
            immutable_tags=image_tag_policy.immutable_tags,
        )
    context.log.info(f"{result.requests} registry requests")
    cursor = result.state.to_cursor()
    if result.candidate is None:
        return dg.SensorResult(skip_reason=result.skip_reason, cursor=cursor)
    candidate = result.candidate
    image = {
        "tag": candidate.tag,
        "digest": candidate.digest,
        "repository": registry.repository,
        "registry": registry.registry,
    }
    run = dg.RunRequest(
        run_key=f"release:{candidate.digest}",
        job_name=CANARY_JOB,
        run_config={"resources": {"release_image": {"config": image}}},
        tags={
            RELEASE_QUEUE_TAG: "canary",
            RUN_TAG_IMAGE_TAG: candidate.tag,
            RUN_TAG_IMAGE_DIGEST: candidate.digest,
            RUN_TAG_IMAGE_REPOSITORY: f"{registry.registry}/{registry.repository}",
        },
    )
    return dg.SensorResult(run_requests=[run], cursor=cursor)


def image_tag_sensor(auto_release: bool) -> dg.SensorDefinition:
    """`new_image_tag_sensor`: running from the first deployment with `auto_release` (HOTPOT_AUTO_RELEASE),
    otherwise stopped until an operator starts it."""
    return dg.sensor(
        name=TAG_SENSOR,
        job_name=CANARY_JOB,
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.RUNNING if auto_release else dg.DefaultSensorStatus.STOPPED,
        description=(
            "Watches HOTPOT_REGISTRY/HOTPOT_IMAGE_REPOSITORY; for the newest tag allowed by the tag policy "
            "whose digest is new and not in production, requests canary_release_job (one run per digest). "
            "Running by default when HOTPOT_AUTO_RELEASE=true."
        ),
    )(watch_registry)


# For evaluating the sensor directly; the code location's own follows HOTPOT_AUTO_RELEASE (build_defs).
new_image_tag_sensor = image_tag_sensor(auto_release=False)


def build_resources(settings: Settings) -> dict[str, dg.ConfigurableResource]:
    return {
        "registry": RegistryResource(
            registry=settings.registry or "",
            repository=settings.image_repository,
            # Optional credentials: an EnvVar only when set (an unset EnvVar fails the run).
            username=dg.EnvVar("HOTPOT_REGISTRY_USERNAME") if settings.registry_username else None,
            password=dg.EnvVar("HOTPOT_REGISTRY_PASSWORD") if settings.registry_password else None,
        ),
        "image_build": ImageBuildResource(
            source=str(settings.app_source or ""),
            builder=settings.image_builder,
            kaniko_namespace=settings.k8s_build_namespace,
            kaniko_registry_secret=settings.kaniko_registry_secret,
        ),
        "image_tag_policy": ImageTagPolicyResource(),
        "release_image": ReleaseImageResource(),
    }


def build_defs(settings: Settings) -> dg.Definitions:
    return dg.Definitions(
        assets=[api_image],
        jobs=[build_image_job],
        sensors=[image_tag_sensor(settings.auto_release)],
        resources=build_resources(settings),
    )
