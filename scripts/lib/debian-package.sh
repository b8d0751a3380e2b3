# Sourced by scripts/ensure-*.sh: install one Debian package for the test suite, quietly, and
# never leave its service running (the tests start throwaway servers of their own).
#
#   install_debian_package WHO PACKAGE [SERVICE]
#
# WHO prefixes the messages (the calling script's name); SERVICE is the systemd unit / init
# script to stop and disable afterwards. CI runs as root on a fresh Debian machine; elsewhere
# sudo is used when it has to be. Exits the calling script with 1 and apt's output on failure.

install_debian_package() {
    local who=$1 package=$2 service=${3:-}
    local -a sudo_cmd=()
    if [[ $(id -u) -ne 0 ]]; then
        if ! command -v sudo >/dev/null 2>&1; then
            echo "$who: not root (no sudo): install the Debian package '$package' by hand" >&2
            exit 1
        fi
        sudo_cmd=(sudo)
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "$who: no apt-get here; install '$package' (or its equivalent) by hand" >&2
        exit 1
    fi

    # Keep the package's maintainer scripts from starting its daemon: a policy-rc.d that answers
    # 101 ("action forbidden") is honoured by invoke-rc.d and deb-systemd-invoke alike. Only add
    # one when the machine has none (container images usually ship their own).
    local policy=/usr/sbin/policy-rc.d added_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' | "${sudo_cmd[@]}" tee "$policy" >/dev/null
        "${sudo_cmd[@]}" chmod 0755 "$policy"
        added_policy=1
    fi

    local log status=0 candidate
    log=$(mktemp)
    if ! "${sudo_cmd[@]}" apt-get update -qq >"$log" 2>&1; then
        echo "$who: apt-get update failed:" >&2
        status=1
    else
        candidate=$(apt-cache policy "$package" 2>>"$log" | awk '/Candidate:/ {print $2}')
        if [[ -z $candidate || $candidate == "(none)" ]]; then
            echo "$who: no installable Debian package '$package' in the configured apt sources" >&2
            status=1
        elif ! DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq \
            --no-install-recommends "$package" >>"$log" 2>&1; then
            echo "$who: installing $package $candidate failed:" >&2
            status=1
        fi
    fi
    if [[ $status -ne 0 ]]; then
        cat "$log" >&2
    fi
    rm -f "$log"
    if [[ $added_policy -eq 1 ]]; then
        "${sudo_cmd[@]}" rm -f "$policy"
    fi
    if [[ $status -ne 0 ]]; then
        exit 1
    fi

    if [[ -n $service ]]; then
        # A systemd machine may still have enabled the unit: stop and disable it all the same.
        if command -v systemctl >/dev/null 2>&1 && [[ -d /run/systemd/system ]]; then
            "${sudo_cmd[@]}" systemctl disable --now "$service.service" >/dev/null 2>&1 || true
        fi
        # Without systemd the init script may have started it if a policy-rc.d let it through.
        if command -v service >/dev/null 2>&1; then
            "${sudo_cmd[@]}" service "$service" stop >/dev/null 2>&1 || true
        fi
    fi
}
