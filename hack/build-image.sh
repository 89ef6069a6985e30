#!/usr/bin/env bash
# Builds the spiderpool-rs image as an OCI image archive without a container daemon: the binaries
# and the shared libraries they link (found with ldd) in one layer tarball, an image config and a
# manifest, laid out per the OCI image spec (oci-layout, index.json, blobs/sha256/) and tarred.
# `ctr images import` and `podman load` read the result.
#   hack/build-image.sh [--bin-dir DIR] [--tag NAME:TAG] [--out FILE]
#   hack/build-image.sh --rootfs DIR --entrypoint JSON --tag NAME:TAG --out FILE
# Defaults: the release binaries of this workspace (built first), ghcr.io/spidernet-io/spiderpool-rs:<version>,
# ./spiderpool-rs-image.tar. With --rootfs, the image is that tree as it is (the CRI tier's busybox
# pause and workload image).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)

version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$repo/Cargo.toml" | head -1)
bin_dir="" rootfs="" entrypoint='["/usr/local/bin/spiderpool-agent"]' tag="ghcr.io/spidernet-io/spiderpool-rs:$version" out="$PWD/spiderpool-rs-image.tar"
while [ $# -gt 0 ]; do
    case "$1" in
    --bin-dir) bin_dir=$2; shift 2 ;;
    --tag) tag=$2; shift 2 ;;
    --rootfs) rootfs=$(realpath "$2"); shift 2 ;;
    --entrypoint) entrypoint=$2; shift 2 ;;
    --out) out=$(realpath -m "$2"); shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
# Paths above are the caller's; the build below runs in the repository.
[ -z "$bin_dir" ] || bin_dir=$(realpath "$bin_dir")
cd "$repo"
bins=(spiderpool-agent spiderpool-controller spiderpool coordinator ifacer)
if [ -z "$bin_dir" ] && [ -z "$rootfs" ]; then
    cargo build --release --quiet --locked $(printf -- '--bin %s ' "${bins[@]}")
    target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
    bin_dir=$target_dir/release
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/rootfs
if [ -n "$rootfs" ]; then
    cp -a "$rootfs" "$root"
else
    mkdir -p "$root/usr/local/bin" "$root/tmp" "$root/etc"
    chmod 1777 "$root/tmp"
    for b in "${bins[@]}"; do
        [ -x "$bin_dir/$b" ] || { echo "missing $bin_dir/$b" >&2; exit 1; }
        strip -o "$root/usr/local/bin/$b" "$bin_dir/$b"
    done
    # The shared libraries and loader the binaries need, at the paths they were linked with.
    for b in "${bins[@]}"; do
        ldd "$bin_dir/$b" | awk '/=> \//{print $3} /^[ \t]*\/lib/{print $1}'
    done | sort -u | while read -r lib; do
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
    done
    printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532::/tmp:/sbin/nologin\n' >"$root/etc/passwd"
    printf 'root:x:0:\nnonroot:x:65532:\n' >"$root/etc/group"
fi

layout=$work/layout
mkdir -p "$layout/blobs/sha256"
blob() { # blob FILE MEDIATYPE: moves FILE into blobs/, prints a descriptor
    local digest size
    digest=$(sha256sum "$1" | cut -d' ' -f1)
    size=$(stat -c %s "$1")
    mv "$1" "$layout/blobs/sha256/$digest"
    printf '{"mediaType":"%s","digest":"sha256:%s","size":%s}' "$2" "$digest" "$size"
}
# Reproducible layer: sorted entries, fixed owner and mtime.
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$root" -cf "$work/layer.tar" .
diff_id=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
# Tests that build and import an image per run ask for speed (IMAGE_GZIP_LEVEL=1).
gzip -n "-${IMAGE_GZIP_LEVEL:-9}" "$work/layer.tar"
layer=$(blob "$work/layer.tar.gz" application/vnd.oci.image.layer.v1.tar+gzip)
cat >"$work/config.json" <<EOF
{"architecture":"amd64","os":"linux",
 "config":{"Entrypoint":$entrypoint,"Env":["PATH=/usr/local/bin:/usr/bin:/bin"],
           "Labels":{"org.opencontainers.image.version":"$version","org.opencontainers.image.source":"https://github.com/spidernet-io/spiderpool-rs"}},
 "rootfs":{"type":"layers","diff_ids":["sha256:$diff_id"]},
 "history":[{"created_by":"hack/build-image.sh"}]}
EOF
config=$(blob "$work/config.json" application/vnd.oci.image.config.v1+json)
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":%s,"layers":[%s]}' \
    "$config" "$layer" >"$work/manifest.json"
manifest=$(blob "$work/manifest.json" application/vnd.oci.image.manifest.v1+json)
# The reference name goes into the index entry, as `ctr images import` and podman expect.
manifest=${manifest%\}}
printf '{"schemaVersion":2,"manifests":[%s,"annotations":{"org.opencontainers.image.ref.name":"%s","io.containerd.image.name":"%s"}}]}' \
    "$manifest" "${tag##*:}" "$tag" >"$layout/index.json"
printf '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$layout" -cf "$out" .
echo "$out: $tag ($(du -h "$out" | cut -f1))"
