#!/usr/bin/env bash
# Installs everything gpuscale needs into ./.venv (idempotent; re-runs are fast).
#   scripts/setup.sh          install the package and its runtime dependencies
#   scripts/setup.sh --dev    also install the test and lint tools
set -euo pipefail
cd "$(dirname "$0")/.."
extras=""
[ "${1:-}" = "--dev" ] && extras="[dev]"
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
stamp=".venv/.gpuscale-installed${extras}"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade "pip==25.3"
    # torch first, pinned, so stable-baselines3's torch requirement is already met by the CPU build
    # and pip never resolves a multi-GB CUDA one (gpuscale train; nothing else imports torch)
    # --no-compile: no bytecode for the ~17,000 installed modules up front (torch's alone take 15 s);
    # Python writes it for the few each command imports, the first time it imports them
    .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-compile "torch==2.13.0"
    .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-compile -e ".${extras}"
    touch "$stamp"
fi
# Compile the simulator's kernels into Numba's cache now, each kernel once and side by side, instead
# of in every worker process of the first command (about 2 s when the cache is already warm).
.venv/bin/python -m gpuscale.sim.warmup
