#!/usr/bin/env bash
# Runs every test tier the project has: static checks, unit (with the plugin driven as a process),
# and netns (real Debian CNI plugins calling ours in network namespaces; root).
# A tier whose prerequisites are missing prints SKIPPED with the reason; under CI=true it fails.
set -euo pipefail
cd "$(dirname "$0")/.."
source hack/lib.sh

step "static: cargo fmt --check, cargo clippy -D warnings"
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings

step "build: every binary (the tiers exec them)"
cargo build --workspace --bins --locked
target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
export SPIDERPOOL_BIN_DIR="$target_dir/debug"

step "unit: cargo test (allocator, parsing, versions, store; plugin processes: verbs, bad input, concurrency, kill -9)"
cargo test --workspace --locked

step "netns: Debian macvlan/bridge + spiderpool in network namespaces"
netns_ready() {
    is_root || { echo "needs root (network namespaces, veth)"; return 1; }
    apt_install iproute2 iputils-ping containernetworking-plugins >&2 || { echo "cannot install iproute2 iputils-ping containernetworking-plugins"; return 1; }
    [ -x /usr/lib/cni/macvlan ] && [ -x /usr/lib/cni/bridge ] || { echo "no Debian CNI plugins in /usr/lib/cni"; return 1; }
    ip netns add sp-probe-$$ 2>/dev/null && ip netns del sp-probe-$$ || { echo "cannot create network namespaces here"; return 1; }
}
if reason=$(netns_ready); then
    # The ignored tests are exactly the root-only tiers.
    cargo test --workspace --locked -- --ignored
else
    skip netns "$reason"
fi

echo
if [ ${#SKIPPED[@]} -gt 0 ]; then
    printf 'DONE with skipped tiers:\n'
    printf '  SKIPPED: %s\n' "${SKIPPED[@]}"
else
    echo "DONE: every tier ran and passed"
fi
