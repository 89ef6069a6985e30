#!/usr/bin/env bash
# spiderpool vs Debian's host-local, side by side in one run (see tests/src/bin/bench-ipam.rs).
# usage: hack/bench-ipam.sh [N]   (default 1000)
set -euo pipefail
cd "$(dirname "$0")/.."
# The same build cache as .ci/run: a release build beside it would be a second multi-GB target.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/spiderpool-rs/target}
source hack/lib.sh
apt_install containernetworking-plugins
cargo build --release --quiet --locked -p spiderpool-ipam -p spiderpool-e2e --bins
target_dir=$(cargo_target_dir)
# The plugin as it ships (static; Debian builds host-local dynamically linked, upstream's release
# binaries are static).
plugins=$(static_plugins release)
echo "$(nproc) CPUs, $(uname -r), data dirs on $(df -T "${TMPDIR:-/tmp}" | awk 'NR==2{print $2}')"
exec "$target_dir/release/bench-ipam" "$plugins/spiderpool" /usr/lib/cni/host-local "${1:-1000}"
