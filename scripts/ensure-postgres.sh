#!/usr/bin/env bash
# Make the PostgreSQL server binaries (initdb, pg_ctl, postgres) available for the test suite.
#
# Installs Debian's `postgresql` package when they are missing; does nothing otherwise. Debian
# keeps them in /usr/lib/postgresql/<major>/bin, off PATH: the tests look there too
# (tests/support/postgres.py). CI runs as root on a fresh Debian machine; elsewhere it uses sudo
# when it has to. The package's own cluster service is never left running: the tests start a
# throwaway server of their own (temp data dir, loopback port). Called by `make test`; safe to
# run any number of times.
set -euo pipefail

PACKAGE=postgresql

have_binaries() {
    local dir
    if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1 \
        && command -v postgres >/dev/null 2>&1; then
        return 0
    fi
    for dir in /usr/lib/postgresql/*/bin; do
        if [[ -x $dir/initdb && -x $dir/pg_ctl && -x $dir/postgres ]]; then
            return 0
        fi
    done
    return 1
}

if have_binaries; then
    exit 0
fi

if [[ $(id -u) -eq 0 ]]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
else
    echo "ensure-postgres: PostgreSQL server binaries missing and not root (no sudo): install" \
         "the Debian package '$PACKAGE' by hand" >&2
    exit 1
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-postgres: no apt-get here; install the PostgreSQL server (initdb, pg_ctl," \
         "postgres) by hand" >&2
    exit 1
fi

# Keep the package's maintainer scripts from starting the cluster they create: a policy-rc.d
# that answers 101 ("action forbidden") is honoured by invoke-rc.d and deb-systemd-invoke alike.
# Only add one when the machine has none (container images usually ship their own).
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
    echo "ensure-postgres: $1" >&2
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
    "${SUDO[@]}" systemctl disable --now postgresql.service >/dev/null 2>&1 || true
fi

if ! have_binaries; then
    echo "ensure-postgres: '$PACKAGE' installed but initdb/pg_ctl/postgres were not found" \
         "(on PATH or in /usr/lib/postgresql/*/bin)" >&2
    exit 1
fi
