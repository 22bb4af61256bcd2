"""Data protection runs without a click: on a fresh Dagster instance the backup and drill schedules, the age
checks and the failure sensors are RUNNING; whether new images are released on their own is
HOTPOT_AUTO_RELEASE alone.

Read through Dagster's own CLI against a new, empty DAGSTER_HOME: the code location is loaded as the daemon
loads it, and the status shown is the one the daemon would act on (declared in code, no stored state)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DAGSTER = str(Path(sys.executable).with_name("dagster"))

PROTECTING_SCHEDULES = {"nightly_backup_schedule", "restore_drill_schedule", "age_checks_schedule"}
PROTECTING_SENSORS = {"release_failure_sensor", "run_failure_alert_sensor", "pipeline_health_sensor"}
NAME = re.compile(r"^[a-z_]+_(schedule|sensor)$")


def listed(kind: str, status: str, tmp_path: Path, **environ: str) -> set[str]:
    """Names that `dagster {kind} list --{status}` shows on a fresh instance."""
    home = tmp_path / f"home-{kind}-{status}"
    home.mkdir()
    bin_dir = Path(sys.executable).parent
    result = subprocess.run(
        [DAGSTER, kind, "list", f"--{status}", "--name", "-w", str(ROOT / "workspace.yaml")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"PATH": str(bin_dir), "DAGSTER_HOME": str(home), "HOME": str(home), **environ},
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return {line.strip() for line in result.stdout.splitlines() if NAME.match(line.strip())}


def test_fresh_instance_runs_the_schedules_and_sensors_that_protect_data(tmp_path):
    running_schedules = listed("schedule", "running", tmp_path)
    assert PROTECTING_SCHEDULES <= running_schedules
    assert listed("schedule", "stopped", tmp_path) & PROTECTING_SCHEDULES == set()
    running_sensors = listed("sensor", "running", tmp_path)
    assert PROTECTING_SENSORS <= running_sensors
    # Releases are not started on their own unless asked for.
    assert "new_image_tag_sensor" not in running_sensors
    assert "new_image_tag_sensor" in listed("sensor", "stopped", tmp_path)


@pytest.mark.parametrize(("value", "running"), [("true", True), ("false", False), ("TRUE", True)])
def test_auto_release_alone_decides_whether_new_images_are_released(tmp_path, value, running):
    sensors = listed("sensor", "running", tmp_path, HOTPOT_AUTO_RELEASE=value)
    assert ("new_image_tag_sensor" in sensors) is running
    assert PROTECTING_SENSORS <= sensors


def test_a_bad_auto_release_value_stops_the_load_naming_the_variable(tmp_path):
    result = subprocess.run(
        [DAGSTER, "definitions", "validate", "-m", "hotpot_orchestration.definitions"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={
            "PATH": str(Path(sys.executable).parent),
            "DAGSTER_HOME": str(tmp_path),
            "HOME": str(tmp_path),
            "HOTPOT_AUTO_RELEASE": "yes please",
        },
        timeout=120,
    )
    assert result.returncode != 0
    assert "HOTPOT_AUTO_RELEASE='yes please' is not valid: expected true or false" in (
        result.stdout + result.stderr
    )


def test_production_config_turns_auto_release_on():
    import yaml

    config = yaml.safe_load((ROOT / "deploy/k8s/config.yaml").read_text())
    assert config["data"]["HOTPOT_AUTO_RELEASE"] == "true"
