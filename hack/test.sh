#!/usr/bin/env bash
# Runs every test tier the project has (ARCHITECTURE.md, "Test tiers"): static checks; unit (with
# the plugins driven as processes); netns (real Debian CNI plugins calling ours in network
# namespaces; root); control plane, kubelet and chart (a real kube-apiserver, kubelets built from
# the Go module proxy); image; CRI (containerd + runc); vm (a real kernel with emulated SR-IOV NICs
# and Soft-RoCE under QEMU; root).
# A tier whose prerequisites are missing prints SKIPPED with the reason; under CI=true it fails.
set -euo pipefail
cd "$(dirname "$0")/.."
source hack/lib.sh

step "static: cargo fmt --check, cargo clippy -D warnings, CRD manifests match the Rust types"
cargo fmt --all --check
# --all-features builds the `verbs` (rdma-sys: libibverbs, bindgen) and `udev` features, which link
# system C libraries; the default build needs none of these.
apt_install libibverbs-dev librdmacm-dev libclang-dev libudev-dev pkg-config
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings
crd_tmp=$(mktemp -d)
cargo run -q --locked -p spiderpool-api --bin crdgen -- --out-dir "$crd_tmp/crds" --policy "$crd_tmp/policy.yaml" --agent-policy "$crd_tmp/agent-policy.yaml"
if ! diff -ru charts/spiderpool/crds "$crd_tmp/crds" || ! diff -u charts/spiderpool/templates/ip-ranges-policies.yaml "$crd_tmp/policy.yaml" \
    || ! diff -u charts/spiderpool/templates/agent-node-policy.yaml "$crd_tmp/agent-policy.yaml"; then
    echo "FAILED: the chart's CRDs or admission policies differ from api/: run cargo run -p spiderpool-api --bin crdgen -- --out-dir charts/spiderpool/crds --policy charts/spiderpool/templates/ip-ranges-policies.yaml --agent-policy charts/spiderpool/templates/agent-node-policy.yaml" >&2
    exit 1
fi
rm -rf "$crd_tmp"

step "build: every binary (the tiers exec them)"
cargo build --workspace --bins --locked
target_dir=$(cargo_target_dir)

step "plugins: spiderpool, coordinator, ifacer and rdma as static executables (as they ship); each runs alone in an empty root"
# Every tier below runs the plugins as they ship: SPIDERPOOL_BIN_DIR links the workspace's debug
# binaries and the plugins' static builds.
SPIDERPOOL_BIN_DIR=$(shipped_bins debug)
export SPIDERPOOL_BIN_DIR
check_static_plugins "$SPIDERPOOL_BIN_DIR"

step "unit: cargo test (allocator, parsing, versions, store; plugin processes: verbs, bad input, concurrency, kill -9)"
cargo test --workspace --locked
# The kernel-facing parts of the `verbs` and `udev` features are proven in the VM (verbs-udev.sh).
cargo test --locked -p spiderpool-linux --features verbs,udev

step "arm64: every binary cross-built for aarch64; the plugin's process tests and the inventory on the fixtures under qemu-user (binfmt)"
source hack/arm64.sh
arm64=false
if reason=$(arm64_run_ready); then
    arm64=true
    arm64_env
    cargo build --workspace --bins --locked --target "$ARM64_TARGET"
    arm64_bin=$(shipped_bins debug "$ARM64_TARGET")
    check_static_plugins "$arm64_bin"
    for bin in spiderpool-agent spiderpool-controller spiderpool coordinator ifacer rdma; do
        machine=$(LC_ALL=C readelf -h "$arm64_bin/$bin" | sed -n 's/^ *Machine: *//p')
        [ "$machine" = AArch64 ] || { echo "FAILED: $arm64_bin/$bin is for '$machine', not AArch64" >&2; exit 1; }
    done
    # A tenth of the concurrency tests' calls: one emulated exec costs ~0.6 s (calls_per_lane).
    # One test at a time: qemu-user can deadlock a child forked while another emulated thread holds
    # its locks (seen once: hostile.rs's child stuck before exec, 0 CPU, for 20 minutes).
    SPIDERPOOL_TEST_EMULATED=1 SPIDERPOOL_BIN_DIR="$arm64_bin" cargo test --locked --target "$ARM64_TARGET" \
        -p spiderpool-ipam --test process --test hostile -p spiderpool-provisioner --test inventory -- --test-threads=1
    # The same inventory, byte for byte, from both architectures' binaries.
    for fixture in tests/fixtures/sysfs/*/; do
        amd64_json=$("$SPIDERPOOL_BIN_DIR/spiderpool-agent" inventory --sysfs-root "$fixture" -o json)
        arm64_json=$("$arm64_bin/spiderpool-agent" inventory --sysfs-root "$fixture" -o json)
        if [ "$amd64_json" != "$arm64_json" ]; then
            diff <(echo "$amd64_json") <(echo "$arm64_json") >&2 || true
            echo "FAILED: inventory of $fixture differs between amd64 and arm64" >&2
            exit 1
        fi
        echo "  ok    inventory of $fixture: arm64 JSON identical to amd64 ($(echo "$arm64_json" | wc -c) bytes)"
    done
else
    skip arm64 "$reason"
fi

step "netns: Debian macvlan/bridge + spiderpool in network namespaces"
netns_ready() {
    is_root || { echo "needs root (network namespaces, veth)"; return 1; }
    apt_install iproute2 iputils-ping containernetworking-plugins >&2 || { echo "cannot install iproute2 iputils-ping containernetworking-plugins"; return 1; }
    [ -x /usr/lib/cni/macvlan ] && [ -x /usr/lib/cni/bridge ] || { echo "no Debian CNI plugins in /usr/lib/cni"; return 1; }
    ip netns add sp-probe-$$ 2>/dev/null && ip netns del sp-probe-$$ || { echo "cannot create network namespaces here"; return 1; }
}
if reason=$(netns_ready); then
    # The ignored tests need root; the control-plane, kubelet and CRI targets are behind
    # spiderpool-e2e's features and run below.
    cargo test --workspace --locked -- --ignored
else
    skip netns "$reason"
fi

# The API server's version, and the newest: v1.37 keeps a successor device plugin registered when
# its predecessor goes (kubernetes#121994 fixed), v1.34 drops it (the plugin registers again).
KUBELET_VERSIONS="1.34.3 1.37.2"
step "control plane: kube-apiserver + etcd (+ helm, kubelet, kube-scheduler, kube-controller-manager, Multus) built from the Go module proxy; CRDs, agents' IPAM service, controller, a real kubelet with the device plugin and the chart end to end, chart"
control_plane_ready() {
    command -v go >/dev/null || { echo "no Go toolchain to build kube-apiserver and etcd"; return 1; }
    command -v openssl >/dev/null || apt_install openssl >&2 || { echo "cannot install openssl"; return 1; }
    command -v curl >/dev/null || apt_install curl >&2 || { echo "cannot install curl"; return 1; }
    hack/control-plane.sh build >&2 || { echo "building kube-apiserver/etcd failed (see above)"; return 1; }
    hack/control-plane.sh helm >/dev/null || { echo "building helm failed (see above)"; return 1; }
    for v in $KUBELET_VERSIONS; do
        K8S_VERSION=$v hack/control-plane.sh kubelet >/dev/null || { echo "building kubelet $v failed (see above)"; return 1; }
    done
    hack/control-plane.sh scheduling >/dev/null || { echo "building kube-scheduler/kube-controller-manager failed (see above)"; return 1; }
    hack/control-plane.sh multus >/dev/null || { echo "building Multus failed (see above)"; return 1; }
}
kubelet_ready() {
    is_root || { echo "needs root (kubelet, containerd, /var/lib/kubelet/device-plugins)"; return 1; }
    apt_install containerd runc busybox-static >&2 || { echo "cannot install containerd runc busybox-static"; return 1; }
    command -v xz >/dev/null || apt_install xz-utils >&2 || { echo "cannot install xz-utils"; return 1; }
    hack/control-plane.sh containerd >/dev/null || { echo "cannot fetch containerd 1.7 (CDI, for the DRA test)"; return 1; }
}
control_plane=false
if reason=$(control_plane_ready); then
    control_plane=true
    # Every Go-built binary is in the cache now; CI machines keep no Go caches (several GB).
    [ "$CI" != true ] || hack/control-plane.sh prune-go
    # An empty etcd every run: `up` would reuse a control plane left running (by a developer, a
    # benchmark), whose pools and registry entries from earlier runs refuse this run's pools.
    hack/control-plane.sh down >/dev/null 2>&1 || true
    kubeconfig=$(hack/control-plane.sh up)
    trap 'hack/control-plane.sh down' EXIT
    SPIDERPOOL_TEST_KUBECONFIG=$kubeconfig cargo test --locked -p spiderpool-e2e --features control-plane --test cluster -- --ignored
    if reason=$(kubelet_ready); then
        for v in $KUBELET_VERSIONS; do
            echo "--- kubelet $v: VF pods from the device plugin; plugin and kubelet restarts; the chart's agent DaemonSet updated while VF pods arrive; e2e: the chart with Multus, a pod with a macvlan NIC and spidernet.io/rdma, a Deployment 0 -> 10 -> 0"
            # One kubelet at a time: its device-plugin directory is fixed.
            SPIDERPOOL_TEST_KUBECONFIG=$kubeconfig SPIDERPOOL_TEST_KUBELET=$(K8S_VERSION=$v hack/control-plane.sh kubelet) \
                SPIDERPOOL_TEST_CONTAINERD_CDI=$(hack/control-plane.sh containerd) \
                cargo test --locked -p spiderpool-e2e --features control-plane --test kubelet -- --ignored --nocapture --test-threads=1 \
                --skip bench::
        done
    else
        skip kubelet "$reason"
    fi
    echo "--- chart: helm lint/template (4 value sets), server-side dry-run, install + upgrade, RBAC"
    hack/test-chart.sh "$kubeconfig"
    hack/control-plane.sh down
    trap - EXIT
else
    skip control-plane "$reason"
fi

step "image: hack/build-image.sh (OCI archive, no daemon) imported into a private containerd and run with runc"
image_ready() {
    is_root || { echo "needs root (containerd, runc)"; return 1; }
    apt_install containerd runc >&2 || { echo "cannot install containerd runc"; return 1; }
    $arm64 || { echo "no arm64 binaries (see the arm64 step above)"; return 1; }
}
if reason=$(image_ready); then
    hack/test-image.sh "$SPIDERPOOL_BIN_DIR" "$arm64_bin"
else
    skip image "$reason"
fi

step "cri: Debian's containerd + runc run pod sandboxes through macvlan + spiderpool + coordinator (tests/tests/cri.rs)"
cri_ready() {
    is_root || { echo "needs root (containerd, runc, network namespaces)"; return 1; }
    apt_install containerd runc busybox-static iproute2 containernetworking-plugins >&2 ||
        { echo "cannot install containerd runc busybox-static iproute2 containernetworking-plugins"; return 1; }
}
if reason=$(cri_ready); then
    cargo test --locked -p spiderpool-e2e --features cri --test cri -- --ignored --nocapture
else
    skip cri "$reason"
fi

step "vm: Debian's 6.12 kernel under QEMU with two igb PFs: real VFs, netlink VF settings, Soft-RoCE, VFs in pods, the rdma step, the agent's verbs and udev features (tests/vm/*.sh); Debian's 7.2 kernel: RDMA between pods (tests/vm/kernel-7.2/*.sh); Debian's 7.3: RDMA devices moved into pods (tests/vm/kernel-7.3/*.sh); the arm64 kernel with the aarch64 inventory"
if is_root; then
    # Only the binaries the guest scripts run, stripped: they travel in the initramfs.
    vm_bin="$target_dir/vm-bin"
    rm -rf "$vm_bin" && mkdir -p "$vm_bin"
    for bin in spiderpool-agent spiderpool ifacer coordinator rdma fake-kubelet; do
        strip -o "$vm_bin/$bin" "$SPIDERPOOL_BIN_DIR/$bin"
    done
    # The agent with the `verbs` and `udev` features too (tests/vm/verbs-udev.sh runs both). The
    # default build is put back at once: switching features only relinks, and later steps use it.
    cargo build --locked -p spiderpool-agent --features verbs,udev
    strip -o "$vm_bin/spiderpool-agent-verbs-udev" "$target_dir/debug/spiderpool-agent"
    cargo build --locked -p spiderpool-agent
    # Debian's ipvlan runs on top of what ifacer makes (the host kernel here has no ipvlan).
    apt_install containernetworking-plugins
    cp /usr/lib/cni/ipvlan /usr/lib/cni/host-device /usr/lib/cni/macvlan "$vm_bin/"
    for script in hack/vm/selftest.sh tests/vm/*.sh; do
        echo "--- $script"
        SPIDERPOOL_BIN_DIR="$vm_bin" hack/vm-test.sh "$script"
    done
    for series in 7.2 7.3; do
        for script in tests/vm/kernel-$series/*.sh; do
            echo "--- $script (VM_KERNEL=$series)"
            SPIDERPOOL_BIN_DIR="$vm_bin" VM_KERNEL=$series hack/vm-test.sh "$script"
        done
    done
    echo "--- hack/vm-arm64-test.sh: Debian's arm64 kernel under qemu-system-aarch64, igb VFs, the aarch64 agent's inventory"
    if $arm64; then
        hack/vm-arm64-test.sh "$arm64_bin"
    else
        skip vm-arm64 "no arm64 binaries (see the arm64 step above)"
    fi
    echo "--- tests/vm/cluster/node-policies.sh: the guest against kube-apiserver on the host's loopback"
    if $control_plane; then
        vm_cluster_bin="$target_dir/vm-cluster-bin"
        rm -rf "$vm_cluster_bin" && mkdir -p "$vm_cluster_bin"
        for bin in spiderpool-agent spiderpool-controller; do
            strip -o "$vm_cluster_bin/$bin" "$target_dir/debug/$bin"
        done
        # The harness brings the control plane up and down itself.
        env -u KUBECONFIG SPIDERPOOL_BIN_DIR="$vm_cluster_bin" \
            hack/vm-test.sh --cluster tests/vm/cluster/node-policies.sh tests/vm/cluster/node-policies.host.sh
    else
        skip vm-cluster "no control plane (see the control-plane step above)"
    fi
else
    skip vm "needs root (installs QEMU and the guest kernel, builds the initramfs)"
fi

echo
if [ ${#SKIPPED[@]} -gt 0 ]; then
    printf 'DONE with skipped tiers:\n'
    printf '  SKIPPED: %s\n' "${SKIPPED[@]}"
else
    echo "DONE: every tier ran and passed"
fi
