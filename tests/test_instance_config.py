"""The local and production Dagster instance files pass Dagster's own validation.

Validation goes the way Dagster itself loads an instance, minus the side effects of production:

1. `dagster_instance_config` checks the file against the instance schema (unknown keys, wrong types,
   the storage selector with its full PostgreSQL schema);
2. `InstanceRef.from_dir` turns every pluggable part (storage, run launcher, run coordinator, ...) into
   the `ConfigurableClassData` Dagster would rehydrate;
3. each of those classes is imported and its config processed against the class's own `config_type()`
   with `process_config`, which also resolves `{env: ...}` sources. That is what
   `ConfigurableClassData.rehydrate()` does before it instantiates the class; the production classes are
   not instantiated, because `PostgresStorage` connects to its database and `K8sRunLauncher` loads the
   in-cluster Kubernetes configuration.

The local file is also loaded for real as a `DagsterInstance` on SQLite in a temporary DAGSTER_HOME.
None of this imports the code location.
"""

from __future__ import annotations

import copy
import importlib
import shutil
from pathlib import Path

import pytest
import yaml
from dagster import DagsterInstance
from dagster._config import process_config, resolve_to_config_type
from dagster._core.errors import DagsterInvalidConfigError
from dagster._core.instance.config import dagster_instance_config
from dagster._core.instance.ref import InstanceRef
from dagster._core.storage.dagster_run import DagsterRun
from dagster._core.workspace.config_schema import process_workspace_config
from dagster._serdes import ConfigurableClassData
from dagster._utils.tags import TagConcurrencyLimitsCounter

ROOT = Path(__file__).resolve().parents[1]
LOCAL_YAML = ROOT / "dagster.yaml"
PRODUCTION_YAML = ROOT / "deploy" / "dagster.yaml"
WORKSPACE_YAML = ROOT / "workspace.yaml"

RELEASE_TAG = "hotpot/release"

# Values for the variables deploy/dagster.yaml reads; the password is deliberately unusual so the test
# can see it arrive through the env source and nowhere else.
PRODUCTION_ENV = {
    "DAGSTER_PG_HOST": "dagster-db.test.invalid",
    "DAGSTER_PG_PORT": "6543",
    "DAGSTER_PG_DB": "dagster",
    "DAGSTER_PG_USERNAME": "dagster",
    "DAGSTER_PG_PASSWORD": "s3cret-from-env",
}


class InstanceConfigError(Exception):
    """A part of an instance file that Dagster rejects."""


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def validate_instance(config: dict, base_dir: Path) -> tuple[InstanceRef, dict[str, dict]]:
    """Validate an instance config as Dagster loads it; return the ref and each class's processed config.

    Raises DagsterInvalidConfigError (instance schema) or InstanceConfigError (a class's own schema).
    """
    base_dir.mkdir(parents=True, exist_ok=True)
    (base_dir / "dagster.yaml").write_text(yaml.safe_dump(config))
    dagster_instance_config(str(base_dir))  # the instance schema, as DagsterInstance.from_config does
    ref = InstanceRef.from_dir(str(base_dir))

    processed: dict[str, dict] = {}
    for field, class_data in ref._asdict().items():
        if not isinstance(class_data, ConfigurableClassData):
            continue
        module = importlib.import_module(class_data.module_name)
        klass = getattr(module, class_data.class_name)
        result = process_config(resolve_to_config_type(klass.config_type()), class_data.config_dict)
        if not result.success:
            messages = "; ".join(error.message for error in result.errors)
            raise InstanceConfigError(f"{field} ({class_data.class_name}): {messages}")
        processed[field] = result.value
    return ref, processed


def _release_limits(config: dict) -> list[dict]:
    coordinator = config["run_coordinator"]
    assert coordinator["class"] == "QueuedRunCoordinator"
    limits = coordinator["config"].get("tag_concurrency_limits") or []
    return [limit for limit in limits if limit["key"] == RELEASE_TAG]


def _assert_one_release_slot(config: dict) -> None:
    """At most one run with the release tag, counted across all values of the tag."""
    limits = _release_limits(config)
    assert len(limits) == 1, f"exactly one tag concurrency limit for {RELEASE_TAG}"
    (limit,) = limits
    assert limit["limit"] == 1
    value = limit.get("value")
    assert value is None or value == {"applyLimitPerUniqueValue": False}, (
        "the release limit must apply across all values of the tag, not per value"
    )

    # And Dagster's own counter, fed these limits, blocks a second release with a different value.
    in_progress = DagsterRun(job_name="canary_release_job", run_id="r1", tags={RELEASE_TAG: "v1"})
    counter = TagConcurrencyLimitsCounter(config["run_coordinator"]["config"]["tag_concurrency_limits"], [])
    counter.update_counters_with_launched_item(in_progress)
    other_release = DagsterRun(job_name="rollback_job", run_id="r2", tags={RELEASE_TAG: "v2"})
    backup = DagsterRun(job_name="nightly_backup_job", run_id="r3", tags={})
    assert counter.is_blocked(other_release)
    assert not counter.is_blocked(backup)


def _assert_common_settings(config: dict) -> None:
    assert config["run_monitoring"]["enabled"] is True
    assert config["run_monitoring"]["start_timeout_seconds"] > 0
    assert config["run_monitoring"]["cancel_timeout_seconds"] > 0
    assert config["run_monitoring"]["poll_interval_seconds"] > 0
    assert config["run_retries"] == {"enabled": True, "max_retries": 1}
    assert config["telemetry"] == {"enabled": False}


@pytest.fixture
def production_env(monkeypatch):
    for name, value in PRODUCTION_ENV.items():
        monkeypatch.setenv(name, value)


# -- local instance ---------------------------------------------------------------------------------


def test_local_instance_validates_and_loads_on_sqlite(tmp_path, monkeypatch):
    home = tmp_path / "dagster_home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    shutil.copy(LOCAL_YAML, home / "dagster.yaml")

    ref, _ = validate_instance(_load(LOCAL_YAML), home)
    assert ref.storage_data.class_name == "DagsterSqliteStorage"
    assert ref.storage_data.config_dict["base_dir"] == str(home)

    with DagsterInstance.from_ref(ref) as instance:
        queue = instance.run_coordinator.get_run_queue_config()
        assert queue.max_concurrent_runs >= 1
        assert {"key": RELEASE_TAG, "limit": 1} in queue.tag_concurrency_limits
        assert instance.run_monitoring_enabled
        assert instance.run_retries_enabled and instance.run_retries_max_retries == 1
        assert type(instance.run_launcher).__name__ == "DefaultRunLauncher"
        assert type(instance.run_storage).__name__ == "SqliteRunStorage"
        assert Path(instance.root_directory) == home


def test_local_instance_settings():
    config = _load(LOCAL_YAML)
    assert "storage" not in config, "the default SQLite storage under DAGSTER_HOME"
    _assert_one_release_slot(config)
    _assert_common_settings(config)


# -- production instance ----------------------------------------------------------------------------


def test_production_instance_validates_with_postgres_and_k8s_classes(tmp_path, production_env):
    ref, processed = validate_instance(_load(PRODUCTION_YAML), tmp_path)

    assert (ref.storage_data.module_name, ref.storage_data.class_name) == (
        "dagster_postgres",
        "DagsterPostgresStorage",
    )
    for storage in (ref.run_storage_data, ref.event_storage_data, ref.schedule_storage_data):
        assert storage.module_name.startswith("dagster_postgres")
    db = processed["storage_data"]["postgres_db"]
    assert db["hostname"] == PRODUCTION_ENV["DAGSTER_PG_HOST"]
    assert db["port"] == int(PRODUCTION_ENV["DAGSTER_PG_PORT"])
    assert db["password"] == PRODUCTION_ENV["DAGSTER_PG_PASSWORD"]

    assert (ref.run_launcher_data.module_name, ref.run_launcher_data.class_name) == (
        "dagster_k8s",
        "K8sRunLauncher",
    )
    launcher = processed["run_launcher_data"]
    assert launcher["job_namespace"] == "hotpot-orchestration"
    assert launcher["service_account_name"]
    assert launcher["instance_config_map"]
    assert "hotpot-orchestration-env" in launcher["env_secrets"]
    assert launcher["image_pull_policy"] in ("IfNotPresent", "Always")

    # The run coordinator has no side effects: instantiate it the way the instance would.
    coordinator = ref.run_coordinator_data.rehydrate()
    assert type(coordinator).__name__ == "QueuedRunCoordinator"
    assert {"key": RELEASE_TAG, "limit": 1} in coordinator.get_run_queue_config().tag_concurrency_limits
    # K8sRunLauncher supports resuming runs; resuming a release mid traffic shift is switched off.
    assert _load(PRODUCTION_YAML)["run_monitoring"]["max_resume_run_attempts"] == 0


def test_production_instance_settings():
    config = _load(PRODUCTION_YAML)
    _assert_one_release_slot(config)
    _assert_common_settings(config)


def test_production_database_settings_come_only_from_the_environment():
    db = _load(PRODUCTION_YAML)["storage"]["postgres"]["postgres_db"]
    for key in ("hostname", "port", "db_name", "username", "password"):
        assert set(db[key]) == {"env"}, f"postgres_db.{key} must be read from an environment variable"
    assert db["password"] == {"env": "DAGSTER_PG_PASSWORD"}


def test_local_and_production_share_the_release_queue():
    local, production = _load(LOCAL_YAML), _load(PRODUCTION_YAML)
    assert _release_limits(local) == _release_limits(production)
    assert local["run_retries"] == production["run_retries"]


# -- the same validation rejects broken files -------------------------------------------------------


def _error_text(error: Exception) -> str:
    details = [getattr(item, "message", str(item)) for item in getattr(error, "errors", [])]
    return " ".join([str(error), *details])


def _break(config: dict, path: tuple, value) -> dict:
    broken = copy.deepcopy(config)
    node = broken
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return broken


@pytest.mark.parametrize(
    ("path", "value", "error", "names"),
    [
        # a key the instance schema does not know
        (("run_monitoring", "start_timeout"), 60, DagsterInvalidConfigError, "start_timeout"),
        # a misspelled PostgreSQL field inside the storage selector
        (("storage", "postgres", "postgres_db", "hostnme"), "db", DagsterInvalidConfigError, "hostnme"),
        # a misspelled K8sRunLauncher option: only the class's own schema can see it
        (("run_launcher", "config", "job_namespce"), "x", InstanceConfigError, "job_namespce"),
        # a tag limit that is not a number: QueuedRunCoordinator's schema
        (
            ("run_coordinator", "config", "tag_concurrency_limits"),
            [{"key": RELEASE_TAG, "limit": "one"}],
            InstanceConfigError,
            "tag_concurrency_limits",
        ),
    ],
    ids=["unknown-instance-key", "unknown-postgres-key", "unknown-launcher-key", "bad-tag-limit"],
)
def test_broken_production_config_is_rejected(tmp_path, production_env, path, value, error, names):
    broken = _break(_load(PRODUCTION_YAML), path, value)
    with pytest.raises(error) as raised:
        validate_instance(broken, tmp_path)
    assert names in _error_text(raised.value)


def test_missing_environment_variable_is_rejected(tmp_path, production_env, monkeypatch):
    monkeypatch.delenv("DAGSTER_PG_PASSWORD")
    with pytest.raises(InstanceConfigError, match="DAGSTER_PG_PASSWORD"):
        validate_instance(_load(PRODUCTION_YAML), tmp_path)


def test_broken_local_config_is_rejected(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    broken = _break(_load(LOCAL_YAML), ("run_retries", "max_retry"), 1)
    with pytest.raises(DagsterInvalidConfigError) as raised:
        validate_instance(broken, tmp_path / "home")
    assert "max_retry" in _error_text(raised.value)


# -- workspace --------------------------------------------------------------------------------------


def test_workspace_file_is_valid_and_loads_the_code_location_module():
    workspace = _load(WORKSPACE_YAML)
    result = process_workspace_config(workspace)
    assert result.success, [error.message for error in result.errors]
    (entry,) = workspace["load_from"]
    assert entry["python_module"]["module_name"] == "hotpot_orchestration.definitions"
    assert entry["python_module"]["location_name"] == "hotpot_orchestration"

    broken = {"load_from": [{"python_module": {"module": "hotpot_orchestration.definitions"}}]}
    assert not process_workspace_config(broken).success


def test_runs_without_the_chart_read_the_rollout_plan_the_chart_mounts():
    launcher = _load(PRODUCTION_YAML)["run_launcher"]["config"]
    deployment = yaml.safe_load((ROOT / "deploy" / "helm" / "values.yaml").read_text())
    [location] = deployment["dagster-user-deployments"]["deployments"]
    [plan_env] = [e for e in location["env"] if e["name"] == "HOTPOT_ROLLOUT_PLAN"]
    assert f"HOTPOT_ROLLOUT_PLAN={plan_env['value']}" in launcher["env_vars"]
    assert launcher["volumes"] == location["volumes"]
    assert launcher["volume_mounts"] == location["volumeMounts"]
