#!/usr/bin/env bash
# Installs Debian's `prometheus` server for the integration tests (if missing) and prints the path of
# its binary. Idempotent: a prometheus already on PATH (or $GPUSCALE_PROMETHEUS) wins. The install does
# not start the service (no systemd here; policy-rc.d denies it): the test fixtures start their own.
#
#   scripts/prometheus.sh        install if needed, print the binary path
set -euo pipefail
if [ -n "${GPUSCALE_PROMETHEUS:-}" ] && [ -x "$GPUSCALE_PROMETHEUS" ]; then echo "$GPUSCALE_PROMETHEUS"; exit 0; fi
if command -v prometheus >/dev/null; then command -v prometheus; exit 0; fi
# One install at a time on a machine (parallel test workers may all ask).
LOCK="${XDG_CACHE_HOME:-$HOME/.cache}/gpuscale/prometheus.lock"
mkdir -p "$(dirname "$LOCK")"
exec 9>"$LOCK"
flock 9
if command -v prometheus >/dev/null; then command -v prometheus; exit 0; fi
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
echo "prometheus.sh: installing Debian's prometheus" >&2
# The package lists may be absent on a fresh machine; refresh them only when the install needs it.
if ! DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus >&2; then
    $SUDO apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus >&2
fi
command -v prometheus
