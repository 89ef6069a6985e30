#!/usr/bin/env bash
# The inventory on a real arm64 kernel: Debian's arm64 6.12 kernel under qemu-system-aarch64 (virt
# machine, TCG) with two SR-IOV-capable igb PFs on PCIe root ports; in the guest igb and igbvf are
# loaded, 4 VFs made on each PF through sysfs, and the aarch64 `spiderpool-agent inventory -o json`
# runs. The host checks what it reported: both PFs with their PCI IDs, driver, SR-IOV totals and four
# VFs each with the igbvf netdevs, and the guest's arm64 kernel. The guest is busybox (Debian's
# busybox-static:arm64), the agent and the libraries it links; nothing else.
#   hack/vm-arm64-test.sh ARM64_BIN_DIR   (root: installs QEMU from bookworm-backports, caches the
#                                          kernel and busybox under ~/.cache/spiderpool-rs/vm-arm64)
set -euo pipefail
cd "$(dirname "$0")/.."
source hack/lib.sh
source hack/arm64.sh
bin_dir=$(realpath "${1:?usage: hack/vm-arm64-test.sh ARM64_BIN_DIR}")
agent=$bin_dir/spiderpool-agent
[ -x "$agent" ] || { echo "no $agent" >&2; exit 1; }
cache=${SPIDERPOOL_CACHE:-$HOME/.cache/spiderpool-rs}/vm-arm64
mkdir -p "$cache"

# bookworm's QEMU 7.2 has no igb; the backports one (10.x) does.
if ! { command -v qemu-system-aarch64 >/dev/null && qemu-system-aarch64 -device help 2>/dev/null | grep -q '"igb"'; }; then
    grep -rqs '^[^#]*bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/ ||
        echo 'deb http://deb.debian.org/debian bookworm-backports main' >/etc/apt/sources.list.d/bookworm-backports.list
    APT_UPDATED=false
    apt-get update -qq
    APT_UPDATED=true
    # All four from backports, or apt cannot resolve the dependencies.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qemu-system-arm/bookworm-backports \
        qemu-system-common/bookworm-backports qemu-system-data/bookworm-backports >/dev/null
    qemu-system-aarch64 -device help 2>/dev/null | grep -q '"igb"' || { echo "installed QEMU has no igb device" >&2; exit 1; }
fi
apt_install xz-utils cpio kmod >/dev/null

# Kernel and busybox, downloaded once (a warm run does not touch the network).
fetch() { # fetch PATTERN PACKAGE: the cached .deb matching PATTERN, downloaded as PACKAGE if missing
    local deb
    deb=$( (compgen -G "$cache/$1" || true) | sort -V | tail -n1)
    if [ -z "$deb" ]; then
        (cd "$cache" && apt-get download -q -o APT::Sandbox::User=root "$2" >&2)
        deb=$(compgen -G "$cache/$1" | sort -V | tail -n1)
    fi
    echo "$deb"
}
kpkg=$( (compgen -G "$cache/linux-image-*.deb" || true) | sort -V | tail -n1 | xargs -r basename | cut -d_ -f1)
if [ -z "$kpkg" ]; then
    kernel_re='^linux-image-6\.12\.[0-9]+\+[a-z0-9.]+-arm64-unsigned$'
    kpkg=$(apt-cache search --names-only "$kernel_re" | awk '{print $1}' | sort -V | tail -n1)
    [ -n "$kpkg" ] || { echo "apt knows no package matching $kernel_re (bookworm-backports)" >&2; exit 1; }
fi
kdeb=$(fetch "${kpkg}_*_arm64.deb" "$kpkg:arm64")
bbdeb=$(fetch "busybox-static_*_arm64.deb" busybox-static:arm64)
kroot=$cache/$(basename "$kdeb" .deb)
if [ ! -d "$kroot" ]; then
    dpkg-deb -x "$kdeb" "$kroot.tmp"
    depmod -b "$kroot.tmp" "$(ls "$kroot.tmp/lib/modules")"
    mv "$kroot.tmp" "$kroot"
fi
kv=$(ls "$kroot/lib/modules")

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
r=$work/root
mkdir -p "$r/bin" "$r/modules" "$r/proc" "$r/sys" "$r/dev"
dpkg-deb -x "$bbdeb" "$work/bb"
cp "$work/bb/bin/busybox" "$r/bin/"
for a in sh mount insmod cat echo ls sleep poweroff; do ln -s busybox "$r/bin/$a"; done
# igb and igbvf with what they need, in load order, decompressed (busybox's insmod reads plain .ko).
modules=()
for m in igb igbvf; do
    path=$(find "$kroot/lib/modules/$kv" -name "$m.ko*" | head -n1)
    rel=${path#"$kroot/lib/modules/$kv/"}
    deps=$(sed -n "s|^$rel: *||p" "$kroot/lib/modules/$kv/modules.dep")
    for dep in $(echo "$deps" | tr ' ' '\n' | tac) "$rel"; do
        name=$(basename "$dep" | sed 's/\.ko.*//')
        [[ " ${modules[*]} " == *" $name "* ]] && continue
        xz -dcf "$kroot/lib/modules/$kv/$dep" >"$r/modules/$name.ko"
        modules+=("$name")
    done
done
aarch64-linux-gnu-strip -o "$r/bin/spiderpool-agent" "$agent"
libs=$(arm64_shared_libs "$agent")
for lib in $libs; do
    mkdir -p "$r$(dirname "$lib")"
    cp -L "$lib" "$r$lib"
done
cat >"$r/init" <<INIT
#!/bin/sh
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev
for m in ${modules[*]}; do insmod /modules/\$m.ko || echo "insmod \$m failed"; done
# Drivers probe asynchronously: wait (10 s at most) for N netdevs of a driver.
netdevs() { for i in \$(seq 100); do [ \$(ls -d /sys/bus/pci/drivers/\$1/0000:*/net/* 2>/dev/null | wc -l) -ge \$2 ] && return; sleep 0.1; done; }
netdevs igb 2
for d in /sys/bus/pci/drivers/igb/0000:*; do echo 4 >"\$d/sriov_numvfs"; done
netdevs igbvf 8
echo SPIDERPOOL_INVENTORY_BEGIN
/bin/spiderpool-agent inventory -o json; echo "SPIDERPOOL_INVENTORY_END \$?"
/bin/spiderpool-agent inventory
poweroff -f
INIT
chmod +x "$r/init"
(cd "$r" && find . | cpio -o -H newc 2>/dev/null | gzip -1 >"$work/initrd.gz")

echo "vm-arm64: kernel $kv, modules ${modules[*]}, agent $(LC_ALL=C readelf -h "$agent" | sed -n 's/^ *Machine: *//p')"
start=$(date +%s.%N)
# The guest's NICs have user-mode backends with no route out (restrict=on): nothing leaves it.
timeout 900 qemu-system-aarch64 -M virt -cpu max -m 1G -smp 2 -nographic -no-reboot \
    -kernel "$kroot/boot/vmlinuz-$kv" -initrd "$work/initrd.gz" -append "console=ttyAMA0 quiet panic=-1" \
    -device pcie-root-port,id=rp1,chassis=1 -device igb,bus=rp1,netdev=n0 -netdev user,id=n0,restrict=on \
    -device pcie-root-port,id=rp2,chassis=2 -device igb,bus=rp2,netdev=n1 -netdev user,id=n1,restrict=on \
    </dev/null >"$work/console.log" 2>&1 || true
end=$(date +%s.%N)
tr -d '\r' <"$work/console.log" | sed -n '/^SPIDERPOOL_INVENTORY_END/,$p' | sed 1d | grep -v '^\[' || true
echo "vm-arm64: boot to power-off in $(awk "BEGIN{printf \"%.1f\", $end - $start}") s"
tr -d '\r' <"$work/console.log" | sed -n '/^SPIDERPOOL_INVENTORY_BEGIN/,/^SPIDERPOOL_INVENTORY_END/p' >"$work/inventory.txt"
python3 - "$work/inventory.txt" "$work/console.log" <<'PY'
import json, sys
lines = open(sys.argv[1]).read().splitlines()
if len(lines) < 2 or lines[-1] != "SPIDERPOOL_INVENTORY_END 0":
    sys.stderr.write(open(sys.argv[2], errors="replace").read()[-4000:])
    sys.exit("FAILED: the guest's inventory did not complete (console above)")
inv = json.loads("\n".join(l for l in lines[1:-1] if not l.startswith("[")))
wrong = []
def want(what, got, expected):
    if got != expected:
        wrong.append(f"{what}: got {got!r}, want {expected!r}")
kernel = inv["node"]["kernel"] or ""
want("guest kernel is arm64", kernel.endswith("-arm64"), True)
pfs = [n for n in inv["nics"] if n["driver"] == "igb"]
want("igb PFs", len(pfs), 2)
for pf in pfs:
    want(f"{pf['name']} PCI ID", (pf["vendorId"], pf["deviceId"]), ("8086", "10c9"))
    sriov = pf.get("sriov") or {}
    want(f"{pf['name']} totalVfs", sriov.get("totalVfs"), 7)
    want(f"{pf['name']} numVfs", sriov.get("numVfs"), 4)
    vfs = sriov.get("vfs") or []
    want(f"{pf['name']} VF ids", [v["vfId"] for v in vfs], [0, 1, 2, 3])
    want(f"{pf['name']} VF drivers", sorted({v["driver"] for v in vfs}), ["igbvf"])
    want(f"{pf['name']} VFs with netdevs", sum(1 for v in vfs if v["name"]), 4)
    want(f"{pf['name']} VFs under the PF's bus", all(v["pciAddress"][:7] == pf["pciAddress"][:7] for v in vfs), True)
if wrong:
    sys.exit("FAILED: arm64 guest inventory:\n  " + "\n  ".join(wrong))
print(f"vm-arm64: ok: kernel {kernel}; " + "; ".join(
    f"{p['name']} {p['pciAddress']} igb {p['sriov']['numVfs']}/{p['sriov']['totalVfs']} VFs" for p in pfs))
PY
