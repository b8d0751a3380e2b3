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

if [[ $(id -u) -eq 0 ]]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
else
    echo "ensure-redis: redis-server missing and not root (no sudo): install the Debian" \
         "package '$PACKAGE' by hand" >&2
    exit 1
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-redis: no apt-get here; install redis-server by hand" >&2
    exit 1
fi

# Keep the package's maintainer scripts from starting its daemon: a policy-rc.d that answers
# 101 ("action forbidden") is honoured by invoke-rc.d and deb-systemd-invoke alike. Only add one
# when the machine has none (container images usually ship their own).
POLICY=/usr/sbin/policy-rc.d
added_policy=0
cleanup() {
    if [[ $added_policy -eq 1 ]]; then
        "${SUDO[@]}" rm -f "$POLICY"
    fi
}
trap cleanup EXIT
if [[ ! -e $POLICY ]]; then
    printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$POLICY" >/dev/null
    "${SUDO[@]}" chmod 0755 "$POLICY"
    added_policy=1
fi

log=$(mktemp)
fail() {
    echo "ensure-redis: $1" >&2
    cat "$log" >&2
    rm -f "$log"
    exit 1
}
"${SUDO[@]}" apt-get update -qq >"$log" 2>&1 || fail "apt-get update failed:"
candidate=$(apt-cache policy "$PACKAGE" 2>>"$log" | awk '/Candidate:/ {print $2}')
if [[ -z $candidate || $candidate == "(none)" ]]; then
    fail "no installable Debian package '$PACKAGE' in the configured apt sources"
fi
DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq --no-install-recommends \
    "$PACKAGE" >>"$log" 2>&1 || fail "installing $PACKAGE $candidate failed:"
rm -f "$log"

# A systemd machine may still have enabled the unit: stop and disable it all the same.
if command -v systemctl >/dev/null 2>&1 && [[ -d /run/systemd/system ]]; then
    "${SUDO[@]}" systemctl disable --now redis-server.service >/dev/null 2>&1 || true
fi
# Without systemd the init script may have started it anyway if a policy-rc.d let it through.
if command -v service >/dev/null 2>&1; then
    "${SUDO[@]}" service redis-server stop >/dev/null 2>&1 || true
fi

if ! have_binaries; then
    echo "ensure-redis: '$PACKAGE' installed but redis-server is not on PATH" >&2
    exit 1
fi
