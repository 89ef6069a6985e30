# aarch64 builds and emulation, shared by hack/test.sh and hack/build-image.sh (source after lib.sh).
# The cross toolchain is Debian's (gcc-aarch64-linux-gnu; ring's C and the linker), the Rust target
# comes from rustup, and aarch64 binaries run through Debian's qemu-user-static registered with
# binfmt_misc, so a test binary that execs a plugin runs it emulated too. Their loader and libc are
# Debian's arm64 packages (multiarch libc6:arm64), where the binaries look for them: an exec that
# clears the environment (CNI runtimes do) still finds them.
# shellcheck shell=bash

ARM64_TARGET=aarch64-unknown-linux-gnu

# arm64_env: what cargo and the emulated binaries need (no installation).
arm64_env() {
    export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
    # The plugins' musl build (hack/lib.sh static_plugins) links with rustup's own musl crt and
    # libc; gcc only drives the link.
    export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=aarch64-linux-gnu-gcc
    export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
    export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
}

# arm64_build_ready: the toolchain for cross builds; prints why not on failure. Callers run it in
# $(...) for that message, so they call arm64_env themselves.
arm64_build_ready() {
    apt_install gcc-aarch64-linux-gnu libc6-dev-arm64-cross binutils-aarch64-linux-gnu >&2 ||
        { echo "cannot install gcc-aarch64-linux-gnu libc6-dev-arm64-cross"; return 1; }
    rustup target list --installed 2>/dev/null | grep -qx "$ARM64_TARGET" ||
        rustup target add "$ARM64_TARGET" >&2 || { echo "rustup cannot add $ARM64_TARGET"; return 1; }
}

# arm64_run_ready: cross builds plus running aarch64 binaries (root: binfmt_misc is the kernel's).
arm64_run_ready() {
    arm64_build_ready || return 1
    if ! dpkg --print-foreign-architectures | grep -qx arm64; then
        is_root || { echo "adding Debian's arm64 architecture needs root"; return 1; }
        dpkg --add-architecture arm64
        APT_UPDATED=false
    fi
    apt_install qemu-user-static libc6:arm64 libgcc-s1:arm64 >&2 ||
        { echo "cannot install qemu-user-static libc6:arm64 libgcc-s1:arm64"; return 1; }
    local binfmt=/proc/sys/fs/binfmt_misc
    if [ ! -e "$binfmt/register" ]; then
        is_root || { echo "binfmt_misc is not mounted and mounting it needs root"; return 1; }
        mount -t binfmt_misc binfmt_misc "$binfmt" || { echo "cannot mount binfmt_misc"; return 1; }
    fi
    if [ ! -e "$binfmt/qemu-aarch64" ]; then
        is_root || { echo "registering qemu-aarch64 with binfmt_misc needs root"; return 1; }
        # Debian's registration line (magic, mask, interpreter, flags), written as systemd-binfmt would.
        cat /usr/lib/binfmt.d/qemu-aarch64.conf >"$binfmt/register" || { echo "cannot register qemu-aarch64 with binfmt_misc"; return 1; }
    fi
    grep -qx enabled "$binfmt/qemu-aarch64" || { echo "binfmt_misc entry qemu-aarch64 is disabled"; return 1; }
}

# arm64_shared_libs BIN...: the loader and libraries aarch64 binaries link, as host paths, one per
# line. A foreign binary cannot be asked (ldd runs it): its ELF program interpreter and NEEDED
# entries are read and found where Debian's arm64 libc6 puts them.
arm64_shared_libs() {
    local b lib d found
    for b in "$@"; do
        LC_ALL=C readelf -l "$b" | sed -n 's/.*Requesting program interpreter: \(.*\)]/\1/p'
        for lib in $(LC_ALL=C readelf -d "$b" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
            found=""
            for d in /lib/aarch64-linux-gnu /usr/lib/aarch64-linux-gnu; do
                [ -e "$d/$lib" ] && { found=$d/$lib; break; }
            done
            [ -n "$found" ] || { echo "arm64 $lib (needed by $b) not found: install libc6:arm64" >&2; return 1; }
            echo "$found"
        done
    done
}
