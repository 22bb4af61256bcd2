"""The code location loads with every public name of the design, through Dagster's own loaders."""

import json
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from hotpot_orchestration.definitions import build_definitions
from hotpot_orchestration.platform.kubernetes import RELEASE_SERVICE_ACCOUNT
from hotpot_orchestration.settings import load_settings

ROOT = Path(__file__).resolve().parents[1]
DAGSTER = str(Path(sys.executable).with_name("dagster"))

JOBS = {
    "nightly_backup_job",
    "restore_drill_job",
    "restore_database_job",
    "build_image_job",
    "canary_release_job",
    "blue_green_release_job",
    "rollback_job",
}
ASSETS = {"postgres_backup", "backup_retention", "restore_drill", "api_image", "production_release"}
SCHEDULES = {"nightly_backup_schedule", "restore_drill_schedule"}
SENSORS = {"new_image_tag_sensor", "release_failure_sensor", "run_failure_alert_sensor"}


@pytest.fixture(scope="module")
def defs() -> dg.Definitions:
    from hotpot_orchestration.definitions import defs

    return defs


def test_every_public_name_is_present(defs):
    repo = defs.get_repository_def()
    assert JOBS <= {job.name for job in repo.get_all_jobs()}
    asset_keys = {key.to_user_string() for key in repo.asset_graph.get_all_asset_keys()}
    assert ASSETS <= asset_keys
    assert any(key.startswith("canary_weight_") for key in asset_keys)
    assert SCHEDULES <= {schedule.name for schedule in repo.schedule_defs}
    assert SENSORS <= {sensor.name for sensor in repo.sensor_defs}


def test_release_graph_runs_from_image_to_production(defs):
    graph = defs.get_repository_def().asset_graph
    steps = sorted(
        (key for key in graph.get_all_asset_keys() if key.to_user_string().startswith("canary_weight_")),
        key=lambda key: int(key.to_user_string().rsplit("_", 1)[1]),
    )
    chain = [dg.AssetKey("api_image"), *steps, dg.AssetKey("production_release")]
    for upstream, downstream in zip(chain, chain[1:], strict=False):
        assert upstream in graph.get(downstream).parent_keys, f"{downstream} should depend on {upstream}"


def test_the_release_gate_is_drawn_in_the_graph_as_lineage_only(defs):
    """One lineage view reads image → release and backup → drill → release: the first canary step depends on
    postgres_backup and restore_drill. Nothing is loaded from them, and the daily partitions of
    postgres_backup do not make the release partitioned."""
    graph = defs.get_repository_def().asset_graph
    backup, drill, image = (dg.AssetKey(name) for name in ("postgres_backup", "restore_drill", "api_image"))
    steps = [key for key in graph.get_all_asset_keys() if key.to_user_string().startswith("canary_weight_")]
    first = min(steps, key=lambda key: int(key.to_user_string().rsplit("_", 1)[1]))
    assert backup in graph.get(drill).parent_keys
    assert {image, backup, drill} <= graph.get(first).parent_keys
    assert graph.get(backup).partitions_def is not None and graph.get(first).partitions_def is None
    for later in set(steps) - {first}:
        assert not {backup, drill} & graph.get(later).parent_keys, f"{later} repeats the gate"
    job = defs.resolve_job_def("canary_release_job")
    assert job.partitions_def is None
    inputs = job.graph.node_named(first.to_user_string()).definition.input_defs
    assert all(put.dagster_type.is_nothing for put in inputs), [put.name for put in inputs]


def test_the_blue_green_release_draws_the_same_gate(defs):
    """blue_green_release_job is made of assets too: its first one depends on the image and, lineage only,
    on postgres_backup, restore_drill and physical_backup (the WAL gate is on by default), and its last
    ones are not production_release, which the canary's last step alone materializes in the graph."""
    graph = defs.get_repository_def().asset_graph
    job = defs.resolve_job_def("blue_green_release_job")
    keys = job.asset_layer.executable_asset_keys
    first = next(key for key in keys if not graph.get(key).parent_keys & keys)
    assert first == dg.AssetKey("blue_green_deploy_idle")
    upstream = {key.to_user_string() for key in graph.get(first).parent_keys}
    assert upstream == {"api_image", "postgres_backup", "restore_drill", "physical_backup"}
    assert {key.to_user_string() for key in keys} == {
        "blue_green_deploy_idle",
        "blue_green_switch",
        "blue_green_scale_down_old",
    }
    assert all(graph.get(key).group_name == "release" for key in keys)
    assert job.partitions_def is None
    inputs = job.graph.node_named(first.to_user_string()).definition.input_defs
    assert all(put.dagster_type.is_nothing for put in inputs), [put.name for put in inputs]


def test_nightly_schedule_follows_the_configured_time_zone():
    defs = build_definitions(load_settings({"HOTPOT_TIMEZONE": "Europe/Moscow"}))
    schedule = defs.get_repository_def().get_schedule_def("nightly_backup_schedule")
    assert schedule.cron_schedule == "0 2 * * *"
    assert schedule.execution_timezone == "Europe/Moscow"


def test_secrets_are_environment_variables_not_config(defs):
    for key in ("postgres", "drill_postgres"):
        url = defs.resources[key].resource.url
        assert isinstance(url, dg.EnvVar), f"{key}.url must come from the environment, got {type(url)}"


@pytest.mark.parametrize(
    "args",
    [["-m", "hotpot_orchestration.definitions"], ["-w", str(ROOT / "workspace.yaml")]],
    ids=["module", "workspace"],
)
def test_dagster_cli_validates_the_code_location(args, tmp_path):
    result = subprocess.run(
        [DAGSTER, "definitions", "validate", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"PATH": str(Path(sys.executable).parent), "DAGSTER_HOME": str(tmp_path), "HOME": str(tmp_path)},
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "All code locations passed validation" in result.stdout + result.stderr


def test_bad_environment_stops_the_load_naming_the_variable(tmp_path):
    result = subprocess.run(
        [DAGSTER, "definitions", "validate", "-m", "hotpot_orchestration.definitions"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={
            "PATH": str(Path(sys.executable).parent),
            "DAGSTER_HOME": str(tmp_path),
            "HOME": str(tmp_path),
            "HOTPOT_ROUTER": "traefik",
        },
        timeout=120,
    )
    assert result.returncode != 0
    assert "HOTPOT_ROUTER='traefik' is not valid: expected one of nginx, ingress-nginx, gateway-api" in (
        result.stdout + result.stderr
    )


def test_release_and_build_runs_get_the_release_service_account_on_kubernetes(defs):
    rbac = (ROOT / "deploy" / "k8s" / "rbac-release.yaml").read_text()
    assert f"name: {RELEASE_SERVICE_ACCOUNT}" in rbac
    repo = defs.get_repository_def()
    for name in ("build_image_job", "canary_release_job", "blue_green_release_job", "rollback_job"):
        tags = repo.get_job(name).tags
        pod_config = json.loads(tags["dagster-k8s/config"])
        assert pod_config["pod_spec_config"]["service_account_name"] == RELEASE_SERVICE_ACCOUNT, name


def test_loading_the_code_location_leaves_heavy_clients_unimported():
    heavy = ["psycopg", "boto3", "botocore", "httpx", "kubernetes", "playwright"]
    code = (
        "import sys; from hotpot_orchestration.definitions import defs; "
        f"print(','.join(m for m in {heavy!r} if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.strip() == "", f"imported at load time: {result.stdout.strip()}"


def _imported_modules(path: Path) -> set[str]:
    import ast

    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_the_product_never_imports_the_local_stack_and_the_image_does_not_ship_it():
    product = ROOT / "hotpot_orchestration"
    offenders = {
        str(path.relative_to(ROOT)): sorted(
            n for n in _imported_modules(path) if n.split(".")[0] == "hotpot_devstack"
        )
        for path in product.rglob("*.py")
    }
    assert {path: names for path, names in offenders.items() if names} == {}
    # Nothing of the local stack (sample app, stand-ins) is left inside the product package.
    assert not list(product.rglob("sample_app")) and not list(product.rglob("*.c"))
    copied = [
        line.split()[1]
        for line in (ROOT / "deploy/Dockerfile").read_text().splitlines()
        if line.startswith("COPY ") and "--from" not in line
    ]
    assert copied == ["pyproject.toml", "hotpot_orchestration"]


@pytest.mark.parametrize(
    "resource, field, value",
    [
        ("image_build", "source", "/tmp/another-checkout"),
        ("image_build", "buildah_binary", "/bin/sh"),
        ("backup_storage", "bucket", "someone-elses-bucket"),
        ("postgres", "url", "postgresql://me@elsewhere/db"),
        ("traffic_router", "nginx_command", ["sh", "-c", "id"]),
    ],
)
def test_launch_time_run_config_cannot_change_what_a_run_uses(defs, resource, field, value):
    """Only the image a release deploys is given at launch; every other resource is fixed at load."""
    job = next(
        job
        for job in defs.get_repository_def().get_all_jobs()
        if resource in job.resource_defs and not job.name.startswith("__")
    )
    config = {"resources": {resource: {"config": {field: value}}}}
    with pytest.raises(dg.DagsterInvalidConfigError, match=f'unexpected config entry "{field}"'):
        job.execute_in_process(run_config=config, instance=dg.DagsterInstance.ephemeral())


class _Greeting(dg.ConfigurableResource):
    word: str


def test_a_locked_resource_reads_its_environment_per_run_within_the_runs_own_instance(monkeypatch):
    """Its EnvVar is read when a run starts, and it is initialized with that run's instance.

    Initializing it outside the run (an ephemeral instance of its own, closed whenever Python collects
    it) once left Dagster's current-instance context pointing at an instance already gone, and every
    later load of the definitions in that process failed.
    """
    import gc

    from dagster._core.storage.defs_state.base import DefsStateStorage  # Dagster's current-instance context

    from hotpot_orchestration.platform.resources import LockedResource

    @dg.asset
    def greeting(context: dg.AssetExecutionContext, greet: _Greeting) -> str:
        return f"{greet.word} from run {context.run_id}"

    job = dg.Definitions(
        assets=[greeting], resources={"greet": LockedResource(_Greeting(word=dg.EnvVar("HOTPOT_TEST_WORD")))}
    ).resolve_implicit_global_asset_job_def()
    words = []
    for word in ("hello", "again"):
        monkeypatch.setenv("HOTPOT_TEST_WORD", word)
        with dg.instance_for_test() as instance:
            result = job.execute_in_process(instance=instance)
        words.append(result.output_for_node("greeting").split()[0])
        gc.collect()
        assert DefsStateStorage.get() is None, "a closed instance is still Dagster's current one"
    assert words == ["hello", "again"]
    assert build_definitions(load_settings({})).resolve_job_def("rollback_job").name == "rollback_job"
