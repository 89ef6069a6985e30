#!/usr/bin/env bash
# Builds the spiderpool-rs image as an OCI image archive without a container daemon: per
# architecture, the binaries and the shared libraries they link in one layer tarball, an image
# config and a manifest; the manifests listed by platform in an image index; laid out per the OCI
# image spec (oci-layout, index.json, blobs/sha256/) and tarred. `ctr images import` and
# `podman load` read the result; a registry push keeps the index, so one tag serves both.
#   hack/build-image.sh [--bin-dir DIR] [--arm64-bin-dir DIR] [--tag NAME:TAG] [--out FILE]
#   hack/build-image.sh --rootfs DIR --entrypoint JSON --tag NAME:TAG --out FILE
# Defaults: the release binaries of this workspace for x86_64 and aarch64, the CNI plugins static (all built first; the
# aarch64 ones with Debian's cross toolchain, installed by hack/arm64.sh), an index of amd64 and
# arm64, tagged ghcr.io/spidernet-io/spiderpool-rs:<version>, written to ./spiderpool-rs-image.tar.
# --bin-dir alone (the tests' debug binaries) makes an index of amd64 only; with --arm64-bin-dir
# too, of both. With --rootfs, the image is that tree as it is, amd64 (the tests' busybox, Multus
# and plugin images).
set -euo pipefail
# Failures inside $(manifest ...) must stop the build too.
shopt -s inherit_errexit
repo=$(cd "$(dirname "$0")/.." && pwd)
source "$repo/hack/lib.sh"
source "$repo/hack/arm64.sh"

version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$repo/Cargo.toml" | head -1)
bin_dir="" arm64_bin_dir="" rootfs="" entrypoint='["/usr/local/bin/spiderpool-agent"]' tag="ghcr.io/spidernet-io/spiderpool-rs:$version" out="$PWD/spiderpool-rs-image.tar"
while [ $# -gt 0 ]; do
    case "$1" in
    --bin-dir) bin_dir=$2; shift 2 ;;
    --arm64-bin-dir) arm64_bin_dir=$2; shift 2 ;;
    --tag) tag=$2; shift 2 ;;
    --rootfs) rootfs=$(realpath "$2"); shift 2 ;;
    --entrypoint) entrypoint=$2; shift 2 ;;
    --out) out=$(realpath -m "$2"); shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
# Paths above are the caller's; the build below runs in the repository.
[ -z "$bin_dir" ] || bin_dir=$(realpath "$bin_dir")
[ -z "$arm64_bin_dir" ] || arm64_bin_dir=$(realpath "$arm64_bin_dir")
cd "$repo"
bins=(spiderpool-agent spiderpool-controller spiderpool coordinator ifacer rdma)
if [ -z "$bin_dir" ] && [ -z "$rootfs" ]; then
    reason=$(arm64_build_ready) || { echo "cannot cross-build for arm64: $reason" >&2; exit 1; }
    arm64_env
    cargo build --release --quiet --locked $(printf -- '--bin %s ' "${bins[@]}")
    cargo build --release --quiet --locked --target "$ARM64_TARGET" $(printf -- '--bin %s ' "${bins[@]}")
    # The CNI plugins as they ship: static (hack/lib.sh static_plugins).
    bin_dir=$(shipped_bins release)
    arm64_bin_dir=$(shipped_bins release "$ARM64_TARGET")
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
layout=$work/layout
mkdir -p "$layout/blobs/sha256"
blob() { # blob FILE MEDIATYPE: moves FILE into blobs/, prints a descriptor
    local digest size
    digest=$(sha256sum "$1" | cut -d' ' -f1)
    size=$(stat -c %s "$1")
    mv "$1" "$layout/blobs/sha256/$digest"
    printf '{"mediaType":"%s","digest":"sha256:%s","size":%s}' "$2" "$digest" "$size"
}

# shared_libs ARCH BIN...: the loader and libraries the binaries link, as host paths, one per line
# (none for a static one: the CNI plugins).
shared_libs() {
    local arch=$1; shift
    if [ "$arch" = amd64 ]; then
        for b in "$@"; do
            has_interpreter "$b" || continue
            ldd "$b" | awk '/=> \//{print $3} /^[ \t]*\/lib/{print $1}'
        done
        return
    fi
    arm64_shared_libs "$@"
}

# manifest ARCH BIN_DIR|'' : lays out one image (from BIN_DIR's binaries, or from --rootfs) and
# prints its manifest's descriptor with its platform.
manifest() {
    local arch=$1 dir=$2 root=$work/rootfs-$1
    if [ -n "$rootfs" ]; then
        cp -a "$rootfs" "$root"
    else
        mkdir -p "$root/usr/local/bin" "$root/tmp" "$root/etc"
        chmod 1777 "$root/tmp"
        local b
        for b in "${bins[@]}"; do
            [ -x "$dir/$b" ] || { echo "missing $dir/$b" >&2; exit 1; }
            if [ "$arch" = arm64 ]; then
                aarch64-linux-gnu-strip -o "$root/usr/local/bin/$b" "$dir/$b"
            else
                strip -o "$root/usr/local/bin/$b" "$dir/$b"
            fi
        done
        # The shared libraries and loader the binaries need, at the paths they were linked with.
        shared_libs "$arch" $(printf "$dir/%s " "${bins[@]}") | sort -u | while read -r lib; do
            mkdir -p "$root$(dirname "$lib")"
            cp -L "$lib" "$root$lib"
        done
        printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532::/tmp:/sbin/nologin\n' >"$root/etc/passwd"
        printf 'root:x:0:\nnonroot:x:65532:\n' >"$root/etc/group"
    fi
    # Reproducible layer: sorted entries, fixed owner and mtime.
    tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$root" -cf "$work/layer.tar" .
    local diff_id layer config desc
    diff_id=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
    # Tests that build and import an image per run ask for speed (IMAGE_GZIP_LEVEL=1).
    gzip -n "-${IMAGE_GZIP_LEVEL:-9}" "$work/layer.tar"
    layer=$(blob "$work/layer.tar.gz" application/vnd.oci.image.layer.v1.tar+gzip)
    cat >"$work/config.json" <<CONF
{"architecture":"$arch","os":"linux",
 "config":{"Entrypoint":$entrypoint,"Env":["PATH=/usr/local/bin:/usr/bin:/bin"],
           "Labels":{"org.opencontainers.image.version":"$version","org.opencontainers.image.source":"https://github.com/spidernet-io/spiderpool-rs"}},
 "rootfs":{"type":"layers","diff_ids":["sha256:$diff_id"]},
 "history":[{"created_by":"hack/build-image.sh"}]}
CONF
    config=$(blob "$work/config.json" application/vnd.oci.image.config.v1+json)
    printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":%s,"layers":[%s]}' \
        "$config" "$layer" >"$work/manifest.json"
    desc=$(blob "$work/manifest.json" application/vnd.oci.image.manifest.v1+json)
    printf '%s,"platform":{"architecture":"%s","os":"linux"}}' "${desc%\}}" "$arch"
}

manifests=$(manifest amd64 "$bin_dir") archs=amd64
if [ -n "$arm64_bin_dir" ] && [ -z "$rootfs" ]; then
    manifests="$manifests,$(manifest arm64 "$arm64_bin_dir")" archs="amd64, arm64"
fi
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[%s]}' "$manifests" >"$work/index.json"
image_index=$(blob "$work/index.json" application/vnd.oci.image.index.v1+json)
# The reference name goes into the layout's entry, as `ctr images import` and podman expect.
printf '{"schemaVersion":2,"manifests":[%s,"annotations":{"org.opencontainers.image.ref.name":"%s","io.containerd.image.name":"%s"}}]}' \
    "${image_index%\}}" "${tag##*:}" "$tag" >"$layout/index.json"
printf '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$layout" -cf "$out" .
echo "$out: $tag ($(du -h "$out" | cut -f1); $archs)"
