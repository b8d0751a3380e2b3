#!/usr/bin/env bash
# Make `prometheus` and `promtool` available for the test suite (tests/deploy, tests/integration).
#
# Installs Debian's `prometheus` package when either binary is missing; does nothing otherwise.
# CI runs as root on a fresh Debian machine; elsewhere it uses sudo when it has to. The package's
# own service is never left running: tests start their own Prometheus on a free port with a
# config and storage dir in a temp dir. Called by `make test`; safe to run any number of times.
set -euo pipefail

PACKAGE=prometheus

have_binaries() {
    command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1
}

if have_binaries; then
    exit 0
fi

# shellcheck source=lib/debian-package.sh
source "$(dirname "$0")/lib/debian-package.sh"
install_debian_package ensure-prometheus "$PACKAGE" prometheus

if ! have_binaries; then
    echo "ensure-prometheus: '$PACKAGE' installed but prometheus/promtool are not on PATH" >&2
    exit 1
fi
