"""CI gates: parsing gates.yaml, running them in order, stopping at the first failure with its tail."""

from __future__ import annotations

import time

import pytest

from hotpot_devstack.sample_api import SAMPLE_APP_DIR
from hotpot_orchestration.release.image.gates import (
    Gate,
    GateConfigError,
    GateFailed,
    load_gates,
    parse_gates,
    run_gates,
)


def test_sample_app_declares_gates_that_run_here():
    names = [gate.name for gate in load_gates(SAMPLE_APP_DIR)]
    assert names == ["format", "lint", "compile", "smoke-test"]


def test_parse_errors_are_specific(tmp_path):
    with pytest.raises(GateConfigError, match="needs a `run:`"):
        parse_gates({"gates": [{"name": "x"}]})
    with pytest.raises(GateConfigError, match="appears twice"):
        parse_gates({"gates": [{"name": "a", "run": "true"}, {"name": "a", "run": "true"}]})
    with pytest.raises(GateConfigError, match="unknown keys"):
        parse_gates({"gates": [{"run": "true", "command": "x"}]})
    with pytest.raises(GateConfigError, match="timeout_seconds"):
        parse_gates({"gates": [{"run": "true", "timeout_seconds": 0}]})
    with pytest.raises(GateConfigError, match="not found"):
        load_gates(tmp_path)
    (tmp_path / "gates.yaml").write_text("gates: [unclosed")
    with pytest.raises(GateConfigError, match="not valid YAML"):
        load_gates(tmp_path)
    assert parse_gates([{"run": "cargo test --all"}])[0].name == "cargo"
    assert parse_gates({"gates": []}) == []


def test_every_problem_of_a_gates_file_is_reported_at_once():
    with pytest.raises(GateConfigError) as error:
        parse_gates(
            {
                "gates": [
                    {"name": "lint", "run": "make lint", "timeout_seconds": -1},
                    {"name": "test", "command": "make test", "retries": 2},
                    {"run": "make audit", "env": ["CI=1"]},
                ]
            },
            origin="checkout/gates.yaml",
        )
    assert str(error.value).splitlines() == [
        "checkout/gates.yaml: gate #1 'lint' timeout_seconds: Input should be greater than 0, got -1",
        "  gate #2 'test' needs a `run:` command",
        "  gate #2 'test' has unknown keys ['command', 'retries']",
        "  gate #3 env: Input should be a valid dictionary, got ['CI=1']",
    ]
    assert parse_gates([{"run": "make", "env": {"CI": True, "JOBS": 4}}])[0].env == {
        "CI": "True",
        "JOBS": "4",
    }


def test_gates_run_in_order_and_a_failure_stops_the_rest(tmp_path):
    gates = [
        Gate("first", "echo one > first.txt"),
        Gate("broken", "for i in $(seq 1 100); do echo line $i; done; echo oops >&2; exit 3"),
        Gate("never", "touch never.txt"),
    ]
    reported = []
    with pytest.raises(GateFailed) as failed:
        run_gates(gates, tmp_path, on_result=reported.append)
    assert [(r.name, r.status) for r in reported] == [
        ("first", "passed"),
        ("broken", "failed"),
        ("never", "not run"),
    ]
    assert (tmp_path / "first.txt").exists() and not (tmp_path / "never.txt").exists()
    result = failed.value.result
    assert result.exit_code == 3
    tail = result.output_tail.splitlines()
    assert len(tail) == 40 and tail[-1] == "oops" and tail[0] == "line 62"
    assert "gate 'broken' failed (exit code 3)" in str(failed.value)
    assert "oops" in str(failed.value)


def test_a_hung_gate_is_killed_with_its_children(tmp_path):
    started = time.monotonic()
    with pytest.raises(GateFailed) as failed:
        run_gates([Gate("hang", "sleep 30 & sleep 30; wait", timeout_seconds=0.5)], tmp_path)
    took = time.monotonic() - started
    assert took < 10, f"the hung gate held the build for {took:.1f} s (its children kept it waiting?)"
    assert failed.value.result.status == "timed out"
    assert "killed after 0.5 s" in failed.value.result.output_tail


def test_gate_env_is_passed(tmp_path):
    results = run_gates([Gate("env", 'test "$GREETING" = hello', env={"GREETING": "hello"})], tmp_path)
    assert results[0].passed


def test_run_config_cannot_name_gates():
    """Gates run shell commands with the run's credentials: only the checkout's gates file names them, and
    Dagster's own config validation refuses them at launch."""
    import dagster as dg

    from hotpot_orchestration.definitions import build_definitions
    from hotpot_orchestration.settings import load_settings

    job = build_definitions(load_settings({})).resolve_job_def("build_image_job")
    injected = {"ops": {"api_image": {"config": {"gates": [{"name": "x", "run": "env > /tmp/leak"}]}}}}
    with pytest.raises(dg.DagsterInvalidConfigError, match=r'unexpected config entry "gates"'):
        dg.validate_run_config(job, injected)
    with pytest.raises(dg.DagsterInvalidConfigError):
        job.execute_in_process(run_config=injected, instance=dg.DagsterInstance.ephemeral())
    # Nor can a run point the build at another gates file: the checkout's gates.yaml is the only one.
    other_file = {"resources": {"image_build": {"config": {"gates_file": "/tmp/gates.yaml"}}}}
    with pytest.raises(dg.DagsterInvalidConfigError, match=r'unexpected config entry "gates_file"'):
        dg.validate_run_config(job, other_file)
    dg.validate_run_config(job, {})  # the job itself needs no op config
