# Shared by the hack/ scripts: tier bookkeeping and prerequisite installation.
# shellcheck shell=bash

CI=${CI:-false}
SKIPPED=()

# Each step says how much disk is left: a full disk fails a later tier in ways that do not say so
# (containerd, etcd).
step() { printf '\n==> %s\n    (disk free: %s)\n' "$*" "$(df -h --output=target,avail / /tmp 2>/dev/null | tail -n +2 | awk '{printf "%s %s  ", $1, $2}')"; }

# skip TIER REASON: a tier that cannot run here. Under CI=true that fails the run.
skip() {
    if [ "$CI" = true ]; then
        echo "FAILED: tier $1 cannot run and CI=true forbids skipping: $2" >&2
        exit 1
    fi
    echo "SKIPPED: tier $1: $2"
    SKIPPED+=("$1 ($2)")
}

is_root() { [ "$(id -u)" = 0 ]; }

# apt_install PKG...: installs the Debian packages that are missing (root only; one apt-get update).
APT_UPDATED=false
apt_install() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if ! is_root; then
        echo "cannot install ${missing[*]}: not root" >&2
        return 1
    fi
    if [ "$APT_UPDATED" = false ]; then
        apt-get update -qq
        APT_UPDATED=true
    fi
    echo "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}
