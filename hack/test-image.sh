#!/usr/bin/env bash
# The image, end to end without a Docker daemon: hack/build-image.sh lays out an OCI archive from
# the given binaries; a private containerd (Debian's, own root, state and socket) imports it and
# runs the binaries from it with runc.
# Both architectures: the index must list amd64 and arm64 manifests whose configs say so, and the
# arm64 binaries run from the image too (Debian's qemu-user-static through binfmt_misc, registered
# with the F flag so runc's container finds the emulator; hack/arm64.sh).
# usage: hack/test-image.sh BIN_DIR ARM64_BIN_DIR   (root; hack/test.sh runs it with the debug binaries)
set -euo pipefail
cd "$(dirname "$0")/.."
bin_dir=${1:?usage: hack/test-image.sh BIN_DIR ARM64_BIN_DIR}
arm64_bin_dir=${2:?usage: hack/test-image.sh BIN_DIR ARM64_BIN_DIR}
work=$(mktemp -d /tmp/spiderpool-image-test.XXXXXX)
sock=$work/containerd.sock
cleanup() {
    [ -f "$work/pid" ] && kill "$(cat "$work/pid")" 2>/dev/null && sleep 0.5
    # Snapshots may still be mounted if a container was left behind.
    grep -o "$work[^ ]*" /proc/mounts 2>/dev/null | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

tag=spiderpool-rs:ci
IMAGE_GZIP_LEVEL=1 hack/build-image.sh --bin-dir "$bin_dir" --arm64-bin-dir "$arm64_bin_dir" --out "$work/image.tar" --tag "$tag"

# The archive itself: an index of two platform manifests, each config naming its architecture.
mkdir "$work/layout" && tar -C "$work/layout" -xf "$work/image.tar"
python3 - "$work/layout" <<'PY'
import json, sys, tarfile
root = sys.argv[1]
def blob(d): return json.load(open(f"{root}/blobs/sha256/{d['digest'].split(':')[1]}"))
top = json.load(open(f"{root}/index.json"))["manifests"]
assert len(top) == 1 and top[0]["mediaType"] == "application/vnd.oci.image.index.v1+json", top
platforms = []
for m in blob(top[0])["manifests"]:
    assert m["mediaType"] == "application/vnd.oci.image.manifest.v1+json", m
    config = blob(blob(m)["config"])
    assert config["architecture"] == m["platform"]["architecture"], (config["architecture"], m["platform"])
    assert config["os"] == m["platform"]["os"] == "linux"
    # Every binary of the layer is built for that architecture (ELF e_machine).
    layer = blob(m)["layers"][0]["digest"].split(":")[1]
    with tarfile.open(f"{root}/blobs/sha256/{layer}") as t:
        bins = [e for e in t.getmembers() if e.name.startswith("./usr/local/bin/")]
        names = sorted(e.name.removeprefix("./usr/local/bin/") for e in bins)
        assert names == ["coordinator", "ifacer", "rdma", "spiderpool", "spiderpool-agent", "spiderpool-controller"], names
        for e in bins:
            f = t.extractfile(e)
            elf = f.read(64)
            machine = int.from_bytes(elf[18:20], "little")
            assert machine == {"amd64": 0x3e, "arm64": 0xb7}[config["architecture"]], (e.name, hex(machine))
            # The CNI plugins run on the host, whatever its glibc: no PT_INTERP (3) program header.
            phoff, phentsize, phnum = (int.from_bytes(elf[a:b], "little") for a, b in ((32, 40), (54, 56), (56, 58)))
            f.seek(phoff)
            headers = f.read(phentsize * phnum)
            types = [int.from_bytes(headers[i * phentsize:][:4], "little") for i in range(phnum)]
            plugin = e.name.removeprefix("./usr/local/bin/") in ("spiderpool", "coordinator", "ifacer", "rdma")
            assert not plugin or 3 not in types, (e.name, "a CNI plugin with a program interpreter")
    platforms.append(m["platform"]["architecture"])
assert platforms == ["amd64", "arm64"], platforms
print("archive: an image index of", ", ".join(platforms), "manifests; each config names its architecture, each layer holds its binaries, the CNI plugins static")
PY

cat >"$work/config.toml" <<CONF
version = 2
root = "$work/root"
state = "$work/state"
[grpc]
  address = "$sock"
[plugins."io.containerd.grpc.v1.cri"]
  # This sandbox refuses negative oom_score_adj (see shared/notes/test-tiers.md).
  restrict_oom_score_adj = true
CONF
containerd --config "$work/config.toml" >"$work/containerd.log" 2>&1 &
echo $! >"$work/pid"
for _ in $(seq 100); do ctr -a "$sock" version >/dev/null 2>&1 && break; sleep 0.1; done
ctr=(ctr -a "$sock" -n spiderpool-test)
"${ctr[@]}" images import --all-platforms "$work/image.tar"
"${ctr[@]}" images ls -q | grep -qx "$tag" || { echo "FAILED: $tag not in containerd after import" >&2; exit 1; }
want_version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)"
for arch in amd64 arm64; do
    run=("${ctr[@]}" run --rm --platform "linux/$arch" "$tag")
    for bin in spiderpool-agent spiderpool-controller; do
        got=$("${run[@]}" "check-$bin-$arch" "/usr/local/bin/$bin" --version)
        echo "from the image, linux/$arch: $got"
        [ "$got" = "$bin $want_version" ] || { echo "FAILED: $arch $bin --version said: $got" >&2; exit 1; }
    done
    # The image's entrypoint is the agent; its inventory runs unprivileged inside the container too.
    "${run[@]}" "check-inventory-$arch" /usr/local/bin/spiderpool-agent inventory -o json >"$work/inventory-$arch.json"
    grep -q '"nics"' "$work/inventory-$arch.json" || { echo "FAILED: inventory from the linux/$arch image printed no inventory" >&2; exit 1; }
done
echo "image: both platforms imported into containerd and ran from it"
