#!/usr/bin/env bash
# `make dev`: the local stack of real services with a restaurant's year of orders, then dagster-webserver
# (http://127.0.0.1:3000) and dagster-daemon on it. Run history stays in .dagster_home; the stack's
# environment and the Dagster logs go to .devstack/. HOTPOT_DEV_SAMPLE=small seeds a few hundred rows instead.
set -euo pipefail
cd "$(dirname "$0")/.."
# Synthetic traffic (20 requests/s through the stack's nginx) stops with the stack, or after 12 hours.
exec .venv/bin/python -m hotpot_devstack --sample "${HOTPOT_DEV_SAMPLE:-year}" --traffic-rate 20 --traffic-hours 12 \
    --env-file "${HOTPOT_DEVSTACK_DIR:-$PWD/.devstack}/env.sh" \
    ui --port "${HOTPOT_DEV_PORT:-3000}" --dagster-home "${HOTPOT_DEV_DAGSTER_HOME:-$PWD/.dagster_home}"
