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

# The CNI plugins. A container runtime execs them on the host (the agent's install-cni copies them
# there), whatever libc that host has (a dynamic glibc build asked for 2.34 or newer), once per pod
# and verb. So they are built for musl, which rustup's musl targets carry, and linked statically:
# no loader and no library of the host. An exec costs half the CPU of a static glibc build
# (0.20 against 0.41 ms, VERSION): glibc's start-up alone reads the CPU's cache sizes through
# cpuid, which traps to the hypervisor in a VM. x86_64 builds stay position-independent (ASLR).
# A cargo target directory of their own keeps the musl target from rebuilding anything else.
CNI_PLUGINS=(spiderpool coordinator ifacer rdma)
# Their packages: named, so that cargo resolves only their features (by binary name alone it
# resolves the whole workspace's, and builds TLS libraries whose C needs a musl C compiler).
CNI_PLUGIN_PACKAGES=(spiderpool-ipam spiderpool-coordinator spiderpool-ifacer spiderpool-rdma)

# cargo_target_dir: where cargo builds this workspace (CARGO_TARGET_DIR or ./target).
cargo_target_dir() {
    local dir
    dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
    [ -n "$dir" ] || { echo "cargo metadata named no target directory" >&2; return 1; }
    echo "$dir"
}

# has_interpreter FILE: whether the ELF file asks for a program interpreter (a dynamic loader).
has_interpreter() { LC_ALL=C readelf -l "$1" | grep -q 'program interpreter'; }

# static_plugins PROFILE [TRIPLE]: builds the plugins (PROFILE debug or release) for TRIPLE's
# machine (default the host's; a -gnu triple, as the other builds name it) with musl, and prints
# their directory. Cross triples need their toolchain's environment (hack/arm64.sh arm64_env).
static_plugins() {
    local profile=$1 triple=${2:-} musl target_dir release=() p
    [ -n "$triple" ] || triple=$(rustc -vV | sed -n 's/^host: //p')
    musl=${triple%-gnu}-musl
    rustup target list --installed 2>/dev/null | grep -qx "$musl" ||
        rustup target add "$musl" >&2 || { echo "rustup cannot add $musl" >&2; return 1; }
    target_dir=$(cargo_target_dir) || return 1
    # The static glibc builds these replaced: gigabytes nothing reads any more.
    [ "$triple" = "$musl" ] || rm -rf "${target_dir:?}/static/$triple"
    [ "$profile" = release ] && release=(--release)
    # RUSTFLAGS would reach these builds too (a host's -C target-cpu, say): unset here.
    env -u RUSTFLAGS -u CARGO_ENCODED_RUSTFLAGS CARGO_TARGET_DIR="$target_dir/static" \
        cargo build --quiet --locked --target "$musl" "${release[@]}" \
        $(printf -- '-p %s ' "${CNI_PLUGIN_PACKAGES[@]}") $(printf -- '--bin %s ' "${CNI_PLUGINS[@]}") >&2 || return 1
    for p in "${CNI_PLUGINS[@]}"; do
        if has_interpreter "$target_dir/static/$musl/$profile/$p"; then
            echo "$target_dir/static/$musl/$profile/$p came out dynamically linked" >&2
            return 1
        fi
    done
    echo "$target_dir/static/$musl/$profile"
}

# shipped_bins PROFILE [TRIPLE]: the workspace's binaries as they ship, the plugins static: a
# directory of links to every executable cargo built for PROFILE (and TRIPLE, if named), the
# plugins to static_plugins' builds instead. Builds the plugins, prints the directory.
shipped_bins() {
    local profile=$1 triple=${2:-} target_dir plugin_dir built out f p
    target_dir=$(cargo_target_dir) || return 1
    plugin_dir=$(static_plugins "$profile" "$triple") || return 1
    built=$target_dir/${triple:+$triple/}$profile
    out=$target_dir/shipped/${triple:+$triple/}$profile
    rm -rf "$out" && mkdir -p "$out"
    for f in "$built"/*; do
        [ -f "$f" ] && [ -x "$f" ] && ln -s "$(realpath "$f")" "$out/$(basename "$f")"
    done
    for p in "${CNI_PLUGINS[@]}"; do
        ln -sfn "$plugin_dir/$p" "$out/$p"
    done
    echo "$out"
}

# check_static_plugins DIR [no-run]: every plugin in DIR has no program interpreter (it needs no
# loader and no library of the host) and, unless no-run (a foreign architecture), answers VERSION
# alone in an empty root: no /lib, no /etc, nothing but itself.
check_static_plugins() {
    local dir=$1 mode=${2:-run} p root out chroot
    # By path: the plugin runs with an empty environment, as runtimes run plugins (and a user's
    # PATH may lack /usr/sbin).
    chroot=("$(PATH=$PATH:/usr/sbin:/sbin command -v chroot)") || { echo "FAILED: no chroot" >&2; exit 1; }
    if ! is_root; then
        chroot=("$(PATH=$PATH:/usr/sbin:/sbin command -v unshare)" -r "${chroot[0]}") ||
            { echo "FAILED: no unshare (running a plugin in an empty root needs chroot, as root or in a user namespace)" >&2; exit 1; }
    fi
    for p in "${CNI_PLUGINS[@]}"; do
        if has_interpreter "$dir/$p"; then
            echo "FAILED: $dir/$p is dynamically linked (it would need the host's loader and glibc)" >&2
            exit 1
        fi
        [ "$mode" = no-run ] && continue
        root=$(mktemp -d)
        cp "$(realpath "$dir/$p")" "$root/$p"
        out=$(echo '{"cniVersion":"1.0.0"}' | env -i CNI_COMMAND=VERSION "${chroot[@]}" "$root" "/$p" 2>&1) || true
        rm -rf "$root"
        grep -q '"supportedVersions"' <<<"$out" ||
            { echo "FAILED: $p alone in an empty root answered VERSION with: $out" >&2; exit 1; }
    done
    echo "plugins in $dir: static (no program interpreter)$([ "$mode" = no-run ] || echo "; each answered VERSION alone in an empty root")"
}
