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

# shellcheck source=lib/debian-package.sh
source "$(dirname "$0")/lib/debian-package.sh"
install_debian_package ensure-postgres "$PACKAGE" postgresql

if ! have_binaries; then
    echo "ensure-postgres: '$PACKAGE' installed but initdb/pg_ctl/postgres were not found" \
         "(on PATH or in /usr/lib/postgresql/*/bin)" >&2
    exit 1
fi
