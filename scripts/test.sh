#!/usr/bin/env bash
# Installs everything (scripts/setup.sh --dev) and runs the whole test suite: ruff, mypy --strict, pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --dev
# Debian's Prometheus, which the integration tests start on 127.0.0.1.
scripts/prometheus.sh > /dev/null
# The real Kubernetes control plane the integration tests start (built once per machine, cached).
scripts/k8s-control-plane.sh > /dev/null
.venv/bin/ruff check src tests
.venv/bin/ruff format --check src tests
.venv/bin/mypy src
.venv/bin/pytest -q -n 2 "$@"
