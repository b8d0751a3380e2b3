#!/usr/bin/env bash
# Make `redis-server` available for the test suite (the shared-limits tests in tests/gateway/auth).
#
# Installs Debian's `redis-server` package when the binary is missing; does nothing otherwise.
# CI runs as root on a fresh Debian machine; elsewhere it uses sudo when it has to. The package's
# own service is never left running: tests start a throwaway redis-server on a free loopback port
# in a temp dir (tests/support/redis_server.py). Called by `make test`; safe to run any number
# of times.
set -euo pipefail

PACKAGE=redis-server

have_binaries() {
    command -v redis-server >/dev/null 2>&1
}

if have_binaries; then
    exit 0
fi

# shellcheck source=lib/debian-package.sh
source "$(dirname "$0")/lib/debian-package.sh"
install_debian_package ensure-redis "$PACKAGE" redis-server

if ! have_binaries; then
    echo "ensure-redis: '$PACKAGE' installed but redis-server is not on PATH" >&2
    exit 1
fi
