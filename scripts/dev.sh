#!/usr/bin/env bash
# `make dev`: the local stack of real services, then `dagster dev` on 127.0.0.1:3000 with its environment.
set -euo pipefail
cd "$(dirname "$0")/.."
export DAGSTER_HOME="$PWD/.dagster_home"
mkdir -p "$DAGSTER_HOME"
ln -sf "$PWD/dagster.yaml" "$DAGSTER_HOME/dagster.yaml"
exec .venv/bin/python -m hotpot_orchestration.devstack run -- \
    .venv/bin/dagster dev -h 127.0.0.1 -p 3000 -w workspace.yaml
