#!/usr/bin/env bash
# `make test` RUNS times in a row (3 by default) with two CPU-bound processes running beside it, as on a busy
# CI machine: the suite must pass every time. The two processes end with this script, however it ends
# (success, a failed run, Ctrl-C); each also stops by itself if this script is killed outright, and after
# HOG_SECONDS at most.
set -euo pipefail
cd "$(dirname "$0")/.."

runs=${RUNS:-3}
hog_seconds=${HOG_SECONDS:-10800}
hogs=()

stop_hogs() {
    for pid in "${hogs[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${hogs[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
}
trap stop_hogs EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

for _ in 1 2; do
    # Busy until its parent (this script) is gone or the time is up.
    python3 -c '
import os, sys, time
parent, end = os.getppid(), time.monotonic() + float(sys.argv[1])
while os.getppid() == parent and time.monotonic() < end:
    pass
' "$hog_seconds" &
    hogs+=("$!")
done

for run in $(seq 1 "$runs"); do
    echo "=== make test: run $run of $runs, beside two CPU-bound processes (pids ${hogs[*]})"
    started=$SECONDS
    if ! make test; then
        echo "=== make test failed on run $run of $runs (after $((SECONDS - started)) s)" >&2
        exit 1
    fi
    echo "=== run $run of $runs passed in $((SECONDS - started)) s"
done
echo "=== make test passed $runs times in a row under load"
