#!/usr/bin/env bash
# `make dev`: the local stack of real services, then `dagster dev` on 127.0.0.1:3000 with its environment.
set -euo pipefail
cd "$(dirname "$0")/.."
export DAGSTER_HOME="$PWD/.dagster_home"
mkdir -p "$DAGSTER_HOME"
ln -sf "$PWD/dagster.yaml" "$DAGSTER_HOME/dagster.yaml"
# Synthetic traffic (20 requests/s through the stack's nginx) stops with the stack, or after 12 hours.
exec .venv/bin/python -m hotpot_devstack --traffic-rate 20 --traffic-hours 12 run -- \
    .venv/bin/dagster dev -h 127.0.0.1 -p 3000 -w workspace.yaml
