#!/usr/bin/env bash
# Usage: hack/vm-test.sh GUEST_SCRIPT [ARGS...]
#        hack/vm-test.sh --cluster GUEST_SCRIPT HOST_SCRIPT   (hack/vm-cluster-test.sh: the guest
#                       against kube-apiserver on the host, HOST_SCRIPT on the host at the same time)
# Boots Debian's 6.12 kernel under QEMU (q35, two SR-IOV-capable igb PFs on PCIe root ports, intel-iommu)
# and runs GUEST_SCRIPT as root in the guest with bash, iproute2, kmod, jq, ethtool, lspci, ibverbs-utils,
# rping (rdmacm-utils), ib_send_lat/ib_send_bw (perftest)
# and the project's binaries on PATH (/opt/spiderpool/bin). Exits with the guest script's status;
# 125 when no status came back (setup failure, kernel panic, timeout).
# Environment:
#   SPIDERPOOL_BIN_DIR  executables copied to the guest's /opt/spiderpool/bin
#                       (default: ${CARGO_TARGET_DIR:-target}/debug when it exists)
#   SPIDERPOOL_CACHE    cache root (default ~/.cache/spiderpool-rs); this script uses its vm/ subdirectory
#   VM_TIMEOUT          seconds before QEMU is killed (default 600)
#   VM_ACCEL            tcg (default) or kvm; the nested KVM on the CI machines cannot boot this kernel
#   VM_MEM, VM_SMP      guest memory and CPUs (default 1G, 2)
#   VM_MGMT_NIC         1: a third NIC (virtio, MAC 52:54:00:00:00:03) on its own user network, for
#                       guests that talk to the host (hack/vm-cluster-test.sh) while the igb PFs
#                       are bonded or reconfigured
#   VM_MODULES          extra kernel modules (space separated) to pack with their dependencies
#   VM_APPEND           extra kernel command line (e.g. loglevel=7 to see boot messages)
#   VM_KERNEL           6.12 (default): Debian's newest 6.12 from bookworm-backports, through apt;
#                       7.2: Debian's newest 7.2 from trixie-backports, read from deb.debian.org's index
#                       (Soft-RoCE with a socket per network namespace, which 6.12 lacks);
#                       7.3: Debian experimental's (or unstable's) 7.3, a release candidate when
#                       written: Soft-RoCE that can move between namespaces (rxe_disassociate_ucontext)
#   VM_KERNEL_PKG       a linux-image-*-unsigned package to use instead of the cached or newest 6.12
#   VM_FILES            space-separated SRC:DEST pairs: host files copied to DEST in the guest (mode 600)
set -Eeuo pipefail
if [ "${1:-}" = --cluster ]; then
    shift
    exec "$(dirname "${BASH_SOURCE[0]}")/vm-cluster-test.sh" "$@"
fi

started=$(date +%s)
die() {
    echo "vm-test: $*" >&2
    exit 125
}
# Setup failures exit 125 too, so they are never mistaken for a guest script's status.
trap 'echo "vm-test: setup failed at line $LINENO" >&2; exit 125' ERR

[ $# -ge 1 ] || die "usage: $0 GUEST_SCRIPT [ARGS...]"
guest_script=$1
shift
if [ ! -f "$guest_script" ] || [ ! -r "$guest_script" ]; then die "guest script '$guest_script' is not a readable file"; fi

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
vmdir=$repo/hack/vm
cache=${SPIDERPOOL_CACHE:-${HOME:?}/.cache/spiderpool-rs}/vm
timeout_s=${VM_TIMEOUT:-600}
accel=${VM_ACCEL:-tcg}
[[ $timeout_s =~ ^[0-9]+$ ]] || die "VM_TIMEOUT must be a number of seconds"
case $accel in tcg | kvm) ;; *) die "VM_ACCEL must be tcg or kvm" ;; esac
if [ -n "${SPIDERPOOL_BIN_DIR+x}" ]; then
    bin_dir=$SPIDERPOOL_BIN_DIR
    [ -z "$bin_dir" ] || [ -d "$bin_dir" ] || die "SPIDERPOOL_BIN_DIR=$bin_dir is not a directory"
else
    bin_dir=${CARGO_TARGET_DIR:-$repo/target}/debug
    [ -d "$bin_dir" ] || bin_dir=
fi

# Modules the tests use (dependencies are added by modprobe --show-depends).
modules=(igb igbvf bonding 8021q macvlan macvtap ipvlan ipvtap veth dummy vrf bridge vxlan tun
    rdma_rxe ib_core ib_uverbs rdma_ucm ib_umad crc32_generic crc32_pclmul
    vfio vfio-pci vfio_iommu_type1 virtio_pci virtio_net)
read -ra extra_modules <<<"${VM_MODULES:-}"
modules+=("${extra_modules[@]}")
# Guest tools, copied from the host with their shared libraries.
tools=(bash ip rdma bridge tc ss devlink jq ethtool lspci setpci ibv_devinfo ibv_devices ibv_rc_pingpong
    rping ib_send_lat ib_send_bw)
host_pkgs=(bash iproute2 kmod jq ethtool pciutils ibverbs-utils ibverbs-providers rdmacm-utils perftest cpio)

mkdir -p "$cache"
# Serialise cache writers; released before QEMU starts.
exec 9>"$cache/.lock"
flock 9

is_root() { [ "$(id -u)" = 0 ]; }
apt_updated=false
apt_update_once() {
    $apt_updated && return 0
    echo "vm-test: apt-get update"
    apt-get update -qq
    apt_updated=true
}
ensure_backports() {
    grep -rqs '^[^#]*bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/ && return 0
    echo 'deb http://deb.debian.org/debian bookworm-backports main' >/etc/apt/sources.list.d/bookworm-backports.list
    apt_updated=false
}
apt_install() {
    echo "vm-test: installing $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# --- host packages -------------------------------------------------------------------------------
missing=()
for p in "${host_pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
command -v busybox >/dev/null || missing+=(busybox-static)
# bookworm's QEMU 7.2 has no igb; the backports one (10.x) does.
need_qemu=false
command -v qemu-system-x86_64 >/dev/null && qemu-system-x86_64 -device help 2>/dev/null | grep -q '"igb"' || need_qemu=true
if [ ${#missing[@]} -gt 0 ] || $need_qemu; then
    if ! is_root; then
        $need_qemu && missing+=("qemu-system-x86 from bookworm-backports")
        die "missing: ${missing[*]}; run this once as root so it can install them"
    fi
    $need_qemu && ensure_backports
    apt_update_once
    [ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"
    if $need_qemu; then
        # All four must come from backports, or apt cannot resolve the dependencies.
        apt_install qemu-system-x86/bookworm-backports qemu-system-common/bookworm-backports \
            qemu-system-data/bookworm-backports seabios/bookworm-backports
        qemu-system-x86_64 -device help 2>/dev/null | grep -q '"igb"' || die "installed QEMU has no igb device"
    fi
fi

# --- kernel ---------------------------------------------------------------------------------------
mkdir -p "$cache/kernel" "$cache/debs" "$cache/initramfs"
series=${VM_KERNEL:-6.12}
case $series in 6.12 | 7.2 | 7.3) ;; *) die "VM_KERNEL must be 6.12, 7.2 or 7.3, not '$series'" ;; esac
kernel_re='^linux-image-6\.12\.[0-9]+\+[a-z0-9.]+-amd64-unsigned$'
kpkg=${VM_KERNEL_PKG:-}
if [ -z "$kpkg" ]; then
    # Prefer what is cached: a warm run must not touch the network.
    kpkg=$(find "$cache/kernel" -mindepth 1 -maxdepth 1 -type d \( -name "linux-image-$series.*" -o -name "linux-image-$series-*" \) -printf '%f\n' | sort -V | tail -n1)
fi
# Debian ships 7.x as linux-binary-VER (the kernel) and linux-modules-VER (/usr/lib/modules), for
# trixie and later; the host's apt is bookworm's, so they come straight from the mirror (the first
# of SUITES that has the series), checked against the index's SHA-256.
fetch_deb13_kernel() {
    local mirror=http://deb.debian.org/debian suite index ver="" p file sum deb tmp kv
    for suite in "$@"; do
        index=$(curl -fsS --retry 3 "$mirror/dists/$suite/main/binary-amd64/Packages.xz" | xz -dc) ||
            die "cannot read $suite's package index from $mirror"
        # 7.2.12+deb13-amd64 (backports), 7.3-amd64 (experimental, unstable)
        ver=$(printf '%s\n' "$index" | sed -n "s/^Package: linux-modules-\(${series//./\\.}\(\.[0-9]*+deb[0-9]*\)\{0,1\}-amd64\)$/\1/p" | sort -V | tail -n1)
        [ -z "$ver" ] || break
    done
    [ -n "$ver" ] || die "none of $* has linux-modules-$series*-amd64"
    kpkg=linux-image-$ver
    tmp=$cache/kernel/$kpkg.tmp
    rm -rf "$tmp" && mkdir -p "$tmp/x"
    for p in "linux-binary-$ver" "linux-modules-$ver"; do
        read -r file sum < <(printf '%s\n' "$index" | awk -v p="$p" '
            $1 == "Package:" { m = ($2 == p) } m && $1 == "Filename:" { f = $2 } m && $1 == "SHA256:" { s = $2 }
            m && f && s && !done { print f, s; done = 1 }')
        [ -n "$file" ] || die "no $p in $suite's index"
        deb=$cache/debs/$(basename "$file")
        if [ ! -f "$deb" ]; then
            echo "vm-test: downloading $p"
            curl -fsS --retry 3 -o "$deb.part" "$mirror/$file" || die "cannot download $file"
            echo "$sum  $deb.part" | sha256sum -c --quiet - || die "$file does not match the index's SHA-256"
            mv "$deb.part" "$deb"
        fi
        dpkg-deb -x "$deb" "$tmp/x"
    done
    kv=$(ls "$tmp/x/usr/lib/modules")
    mkdir -p "$tmp/lib" "$tmp/boot"
    mv "$tmp/x/usr/lib/modules" "$tmp/lib/modules"
    mv "$tmp/lib/modules/$kv/vmlinuz" "$tmp/boot/vmlinuz-$kv"
    rm -rf "$tmp/x"
    # These packages ship no modules.order or modules.builtin*; depmod and the packing below want them.
    for f in modules.order modules.builtin modules.builtin.modinfo; do : >"$tmp/lib/modules/$kv/$f"; done
    depmod -b "$tmp" "$kv"
    mv "$tmp" "$cache/kernel/$kpkg"
}
if [ -z "$kpkg" ] && [ "$series" = 7.2 ]; then
    fetch_deb13_kernel trixie-backports
elif [ -z "$kpkg" ] && [ "$series" = 7.3 ]; then
    fetch_deb13_kernel experimental sid
fi
if [ -z "$kpkg" ]; then
    newest_kernel() { apt-cache search --names-only "$kernel_re" | awk '{print $1}' | sort -V | tail -n1; }
    kpkg=$(newest_kernel)
    if [ -z "$kpkg" ]; then
        is_root || die "no linux-image-6.12.*-amd64-unsigned known to apt; as root this script adds bookworm-backports"
        ensure_backports
        apt_update_once
        kpkg=$(newest_kernel)
    fi
    [ -n "$kpkg" ] || die "apt knows no package matching $kernel_re"
fi
kroot=$cache/kernel/$kpkg
if [ ! -d "$kroot" ]; then
    if ! compgen -G "$cache/debs/${kpkg}_*.deb" >/dev/null; then
        echo "vm-test: downloading $kpkg"
        sandbox=()
        is_root && sandbox=(-o APT::Sandbox::User=root)
        (cd "$cache/debs" && apt-get download -q "${sandbox[@]}" "$kpkg") || die "cannot download $kpkg"
    fi
    deb=$(compgen -G "$cache/debs/${kpkg}_*.deb" | sort -V | tail -n1)
    echo "vm-test: extracting $(basename "$deb")"
    rm -rf "$kroot.tmp"
    dpkg-deb -x "$deb" "$kroot.tmp"
    kv=$(ls "$kroot.tmp/lib/modules")
    # The package ships no modules.dep; modprobe --show-depends below needs one.
    depmod -b "$kroot.tmp" "$kv"
    mv "$kroot.tmp" "$kroot"
fi
kver=$(ls "$kroot/lib/modules")
vmlinuz=$kroot/boot/vmlinuz-$kver
[ -f "$vmlinuz" ] || die "no $vmlinuz in $kroot"

# --- base initramfs (cached): tools, libraries, modules, /init ------------------------------------
tool_path() { PATH=/usr/sbin:/usr/bin:/sbin:/bin command -v "$1" || die "no $1 on the host"; }
key=$({
    echo "$kpkg ${modules[*]}"
    cat "${BASH_SOURCE[0]}" "$vmdir/init"
    dpkg-query -W "${host_pkgs[@]}" busybox-static busybox 2>/dev/null || true
    sha256sum "$(tool_path busybox)"
} | sha256sum | cut -c1-16)
base=$cache/initramfs/base-$kver-$key.cpio.gz
manifest=$cache/initramfs/base-$kver-$key.files

# libs_of FILE: the shared libraries (and loader) FILE needs, one absolute path a line.
libs_of() {
    { ldd "$1" 2>/dev/null || true; } | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'
}
# usr_path PATH: PATH as it sits in the guest's merged /usr (/lib/x.so -> /usr/lib/x.so).
usr_path() {
    case $1 in /bin/* | /sbin/* | /lib/* | /lib64/*) echo "/usr$1" ;; *) echo "$1" ;; esac
}
# put ROOT SRC DEST: copies SRC (dereferenced) to ROOT/DEST, then the libraries it needs that are
# neither in ROOT nor listed in $skip_manifest (the base initramfs's files).
put() {
    local root=$1 src=$2 dest=$3 lib
    mkdir -p "$root$(dirname "$dest")"
    cp -L "$src" "$root$dest"
    for lib in $(libs_of "$src"); do
        dest=$(usr_path "$lib")
        [ -e "$root$dest" ] && continue
        [ -n "${skip_manifest:-}" ] && grep -Fxq ".$dest" "$skip_manifest" && continue
        mkdir -p "$root$(dirname "$dest")"
        cp -L "$lib" "$root$dest"
    done
}
# mkcpio DIR: newc archive of DIR on stdout, owned by root.
mkcpio() { (cd "$1" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet); }

work=$(mktemp -d "${TMPDIR:-/tmp}/vm-test.XXXXXX")
trap 'rm -rf "$work"' EXIT

if [ ! -f "$base" ] || [ ! -f "$manifest" ]; then
    echo "vm-test: building base initramfs for $kver"
    r=$work/base
    mkdir -p "$r"/{usr/bin,usr/sbin,usr/lib,usr/lib64,etc/modprobe.d,etc/libibverbs.d,proc,sys,dev,run,tmp,root,guest,opt/spiderpool/bin,var}
    # Merged-/usr layout, as on the host, so ldd's paths work as they are.
    for d in bin sbin lib lib64; do ln -s "usr/$d" "$r/$d"; done
    install -m 0755 "$vmdir/init" "$r/init"
    for t in "${tools[@]}"; do put "$r" "$(tool_path "$t")" "/usr/bin/$t"; done
    ln -s bash "$r/usr/bin/sh"
    put "$r" "$(tool_path kmod)" /usr/bin/kmod
    for t in modprobe insmod rmmod lsmod depmod modinfo; do ln -s ../bin/kmod "$r/usr/sbin/$t"; done
    put "$r" "$(tool_path busybox)" /usr/bin/busybox
    # Busybox only for what nothing else provides; never its sh or ip (see hack/vm/init).
    for a in $("$r/usr/bin/busybox" --list); do
        case $a in sh | ash | hush | init | linuxrc | ip | ip?* | modprobe | insmod | rmmod | lsmod | depmod | modinfo) continue ;; esac
        [ -e "$r/usr/bin/$a" ] || [ -e "$r/usr/sbin/$a" ] || ln -s busybox "$r/usr/bin/$a"
    done
    # libibverbs providers are dlopen()ed: ldd of ibv_devinfo does not list them.
    cp /etc/libibverbs.d/*.driver "$r/etc/libibverbs.d/"
    for so in /usr/lib/x86_64-linux-gnu/libibverbs/*.so; do put "$r" "$so" "$so"; done
    [ -d /usr/share/iproute2 ] && mkdir -p "$r/usr/share" && cp -r /usr/share/iproute2 "$r/usr/share/"
    [ -f /usr/share/misc/pci.ids ] && mkdir -p "$r/usr/share/misc" && cp /usr/share/misc/pci.ids "$r/usr/share/misc/"
    printf 'root:x:0:0:root:/root:/bin/bash\n' >"$r/etc/passwd"
    printf 'root:x:0:\n' >"$r/etc/group"
    printf '127.0.0.1 localhost\n::1 localhost\n' >"$r/etc/hosts"
    # bonding/dummy would otherwise create bond0/dummy0 on load; rdma_rxe needs a crc32 it does not declare.
    cat >"$r/etc/modprobe.d/spiderpool-vm.conf" <<'EOF'
options bonding max_bonds=0
options dummy numdummies=0
softdep rdma_rxe pre: crc32_generic
EOF
    # Kernel modules: the closure of the list above, then depmod for the guest's modprobe.
    mdir=lib/modules/$kver
    mkdir -p "$r/$mdir"
    for m in "${modules[@]}"; do
        if ! deps=$(modprobe -d "$kroot" -S "$kver" --show-depends "$m" 2>&1); then
            # Kernels from 6.14 on build the crc32 library in; Debian's 7.x packages build more in
            # (virtio_pci) and ship no modules.builtin to say so (fetch_deb13_kernel leaves it
            # empty), so a missing module counts as built in there; the guest's modprobe still
            # fails if it is not.
            case $m in crc32_generic | crc32_pclmul) continue ;; esac
            [ -s "$kroot/$mdir/modules.builtin" ] || { echo "vm-test: $m: no module, taken as built in"; continue; }
            die "kernel module $m: $deps"
        fi
        while read -r kind path _; do
            [ "$kind" = insmod ] || continue
            rel=${path#"$kroot"/}
            mkdir -p "$r/$(dirname "$rel")"
            cp "$path" "$r/$rel"
        done <<<"$deps"
    done
    cp "$kroot/$mdir"/modules.{order,builtin,builtin.modinfo} "$r/$mdir/"
    depmod -b "$r" "$kver"
    (cd "$r" && find . -mindepth 1 ! -type d) | LC_ALL=C sort >"$work/manifest"
    # Pad to 4 bytes: the kernel only finds an uncompressed cpio appended after it at an aligned offset.
    mkcpio "$r" | gzip -1 >"$work/base.cpio.gz"
    truncate -s %4 "$work/base.cpio.gz"
    rm -f "$cache/initramfs/base-$kver-"*
    mv "$work/manifest" "$manifest"
    mv "$work/base.cpio.gz" "$base"
    rm -rf "$r"
fi
# Copied under the lock: another run may replace the base image once the lock is released.
cp "$base" "$work/initrd"
exec 9>&-

# --- per-run overlay: the guest script, its arguments, the project's binaries ----------------------
o=$work/overlay
mkdir -p "$o/guest" "$o/opt/spiderpool/bin"
cp "$guest_script" "$o/guest/script"
cp "$vmdir/lib.sh" "$o/guest/lib.sh"
# NUL-separated, so arguments reach the guest byte for byte.
if [ $# -gt 0 ]; then printf '%s\0' "$@" >"$o/guest/args"; else : >"$o/guest/args"; fi
read -ra guest_files <<<"${VM_FILES:-}"
for pair in "${guest_files[@]}"; do
    src=${pair%%:*} dest=${pair#*:}
    [ -f "$src" ] && [ "${dest#/}" != "$dest" ] || die "VM_FILES entry '$pair' is not SRC:/ABSOLUTE/DEST of a file"
    install -D -m 0600 "$src" "$o$dest"
done
bins=()
if [ -n "$bin_dir" ]; then
    for f in "$bin_dir"/*; do
        case $f in *.d | *.rlib | *.so | *.so.*) continue ;; esac
        if [ ! -f "$f" ] || [ ! -x "$f" ]; then continue; fi
        skip_manifest=$manifest put "$o" "$f" "/opt/spiderpool/bin/$(basename "$f")"
        bins+=("$(basename "$f")")
    done
fi
echo "vm-test: kernel $kver ($kpkg), accel $accel, guest binaries from ${bin_dir:-nowhere}: ${bins[*]:-none}"
mkcpio "$o" >"$work/overlay.cpio"
cat "$work/overlay.cpio" >>"$work/initrd"
rm -rf "$o" "$work/overlay.cpio"

# --- boot -----------------------------------------------------------------------------------------
machine=q35,accel=$accel,kernel-irqchip=split
cpu=()
if [ "$accel" = kvm ]; then
    if [ ! -r /dev/kvm ] || [ ! -w /dev/kvm ]; then die "VM_ACCEL=kvm but /dev/kvm is not usable"; fi
    cpu=(-cpu host)
fi
# shellcheck disable=SC2054 # the commas belong to QEMU's option syntax
qemu=(qemu-system-x86_64 -machine "$machine" "${cpu[@]}" -m "${VM_MEM:-1G}" -smp "${VM_SMP:-2}"
    -nodefaults -display none -serial stdio -no-reboot
    -device intel-iommu,intremap=on
    -kernel "$vmlinuz" -initrd "$work/initrd"
    -append "console=ttyS0 panic=-1 intel_iommu=on quiet ${VM_APPEND:-}"
    # romfile= : no iPXE option ROM, nothing here network-boots.
    -device pcie-root-port,id=rp1,chassis=1
    -device igb,bus=rp1,netdev=n1,mac=52:54:00:00:00:01,romfile=
    -netdev user,id=n1
    -device pcie-root-port,id=rp2,chassis=2
    -device igb,bus=rp2,netdev=n2,mac=52:54:00:00:00:02,romfile=
    -netdev user,id=n2)
if [ "${VM_MGMT_NIC:-0}" = 1 ]; then
    qemu+=(-device virtio-net-pci,netdev=mgmt,mac=52:54:00:00:00:03,romfile= -netdev user,id=mgmt)
fi
trap - ERR
for attempt in 1 2; do
boot_started=$(date +%s)
set +e
# Made before QEMU starts, or tail can look for it first and show nothing of the guest.
: >"$work/console.log"
"${qemu[@]}" </dev/null >"$work/console.log" 2>&1 &
qemu_pid=$!
tail -n +1 -f --pid="$qemu_pid" "$work/console.log" &
tail_pid=$!
qemu_rc=""
marker_seen=""
stalled=""
while kill -0 "$qemu_pid" 2>/dev/null; do
    now=$(date +%s)
    if [ -z "$marker_seen" ] && tr -d '\r' <"$work/console.log" | grep -q '^SPIDERPOOL_VM_EXIT=[0-9]'; then
        marker_seen=$now
    fi
    # The guest kernel reports that a vCPU's timer interrupts stopped arriving (seen once under TCG
    # on a loaded 2-core host while VFs were being created): that guest never recovers, so stop it
    # now instead of waiting out VM_TIMEOUT, and boot once more below.
    if [ -z "$marker_seen" ] && grep -q 'rcu_preempt detected stalls\|timer wakeup didn.t happen' "$work/console.log"; then
        stalled=$now
        kill -9 "$qemu_pid" 2>/dev/null
        qemu_rc=124
        break
    fi
    # The guest reported: give its poweroff 10 s, then stop QEMU ourselves (a guest hung in a
    # kworker after poweroff -f was seen under TCG, which would otherwise cost the whole timeout).
    if [ -n "$marker_seen" ] && [ $((now - marker_seen)) -ge 10 ]; then
        echo "vm-test: guest reported but did not power off in 10 s; stopping QEMU" >&2
        kill "$qemu_pid" 2>/dev/null; sleep 1; kill -9 "$qemu_pid" 2>/dev/null
        break
    fi
    if [ $((now - boot_started)) -ge "$timeout_s" ]; then
        kill -9 "$qemu_pid" 2>/dev/null
        qemu_rc=124
        break
    fi
    sleep 0.2
done
wait "$qemu_pid"
rc=$?
[ -n "$qemu_rc" ] || qemu_rc=$rc
wait "$tail_pid" 2>/dev/null
set -e
ended=$(date +%s)

# A guest that died before its script started (no marker from /init) ran nothing: boot once more.
if [ "$attempt" = 1 ] && ! tr -d '\r' <"$work/console.log" | grep -q '^SPIDERPOOL_VM_SCRIPT_STARTED$' \
    && ! tr -d '\r' <"$work/console.log" | grep -q '^SPIDERPOOL_VM_EXIT='; then
    echo "vm-test: the guest died before its script started (QEMU exited $qemu_rc); booting again" >&2
    continue
fi
# A guest whose kernel stalled (above) proves nothing either way: the whole script runs again on a
# fresh boot, and a second stall fails the tier.
if [ "$attempt" = 1 ] && [ -n "$stalled" ]; then
    echo "vm-test: the guest kernel reported a CPU stall $((stalled - boot_started))s after boot (console above); booting again" >&2
    continue
fi
break
done
status=$(tr -d '\r' <"$work/console.log" | sed -n 's/^SPIDERPOOL_VM_EXIT=\([0-9]\{1,3\}\)$/\1/p' | tail -n1)
timing="boot+script $((ended - boot_started))s, setup $((boot_started - started))s"
if [ -z "$status" ]; then
    if [ -n "$stalled" ]; then
        echo "vm-test: FAILED: no guest exit status: the guest kernel stalled on both boots ($timing)" >&2
    elif [ "$qemu_rc" = 124 ] || [ "$qemu_rc" = 137 ]; then
        echo "vm-test: FAILED: no guest exit status: killed after VM_TIMEOUT=${timeout_s}s ($timing)" >&2
    else
        echo "vm-test: FAILED: no guest exit status (QEMU exited $qemu_rc: kernel panic or QEMU error above) ($timing)" >&2
    fi
    exit 125
fi
echo "vm-test: guest script exited $status ($timing)"
exit "$status"
