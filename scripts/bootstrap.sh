#!/usr/bin/env bash
# Installs what the project needs and is missing: Debian packages (when root on Debian/Ubuntu)
# and the Python virtual environment in .venv. Safe to run again; does nothing when all is there.
set -euo pipefail
cd "$(dirname "$0")/.."

# nginx, prometheus, docker-registry: the devstack's router, metrics and registry; buildah: image builds;
# gcc: compiles the sample app; chromium: the browser check of the Dagster UI; postgresql-client-15 and
# postgresql-15: backups with PostgreSQL 15's own pg_dump (/usr/lib/postgresql/15/bin), of a PostgreSQL 15
# server the tests start themselves (the package's own cluster is not used); pgbackrest: the speed anchor of
# bench/pitr_rto.py; libpq-dev: barman's psycopg2 builds against it; awscli: the runbook's S3 commands, which
# tests/test_docs.py runs.
APT_PACKAGES=(nginx prometheus docker-registry buildah gcc libc6-dev chromium postgresql-client-15 postgresql-15 pgbackrest libpq-dev awscli)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        echo "Installing Debian packages: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        echo "Missing system packages: ${missing[*]}" >&2
        echo "Install them with: sudo apt-get install ${missing[*]}" >&2
        exit 1
    fi
fi

PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3 || true)}
if [[ -z "$PYTHON" ]] || ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "Python 3.11 or newer is needed (set PYTHON=/path/to/python3.11)" >&2
    exit 1
fi
[[ -x .venv/bin/python ]] || "$PYTHON" -m venv .venv
if [[ ! -f .venv/.installed || pyproject.toml -nt .venv/.installed ]]; then
    echo "Installing Python dependencies into .venv"
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e '.[test]'
    touch .venv/.installed
fi
