#!/usr/bin/env bash
# The image, end to end without a Docker daemon: hack/build-image.sh lays out an OCI archive from
# the given binaries; a private containerd (Debian's, own root, state and socket) imports it and
# runs the binaries from it with runc.
# usage: hack/test-image.sh BIN_DIR   (root; hack/test.sh runs it with the debug binaries)
set -euo pipefail
cd "$(dirname "$0")/.."
bin_dir=${1:?usage: hack/test-image.sh BIN_DIR}
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
hack/build-image.sh --bin-dir "$bin_dir" --out "$work/image.tar" --tag "$tag"

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
"${ctr[@]}" images import "$work/image.tar"
"${ctr[@]}" images ls -q | grep -qx "$tag" || { echo "FAILED: $tag not in containerd after import" >&2; exit 1; }
for bin in spiderpool-agent spiderpool-controller; do
    got=$("${ctr[@]}" run --rm "$tag" "check-$bin" "/usr/local/bin/$bin" --version)
    echo "from the image: $got"
    [ "$got" = "$bin $(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)" ] || { echo "FAILED: $bin --version said: $got" >&2; exit 1; }
done
# The image's entrypoint is the agent; its inventory runs unprivileged inside the container too.
"${ctr[@]}" run --rm "$tag" check-inventory /usr/local/bin/spiderpool-agent inventory -o json >"$work/inventory.json"
grep -q '"nics"' "$work/inventory.json" || { echo "FAILED: inventory from the image printed no inventory" >&2; exit 1; }
echo "image: imported into containerd and ran from it"
