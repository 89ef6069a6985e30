#!/usr/bin/env bash
# The control-plane tier: a real kube-apiserver and etcd on loopback.
#   hack/control-plane.sh build   builds kube-apiserver, kubectl (k8s.io/kubernetes) and etcd
#                                 (go.etcd.io/etcd/server/v3) from the Go module proxy into the cache
#   hack/control-plane.sh up      starts etcd and kube-apiserver with throwaway certificates and
#                                 prints the kubeconfig's path (builds first when needed)
#   hack/control-plane.sh down    stops both and removes the state
#   hack/control-plane.sh bin     prints the directory holding the binaries
#   hack/control-plane.sh prune-go  removes the Go module and build caches these builds filled
#   hack/control-plane.sh helm    builds helm (helm.sh/helm/v3) into the cache and prints its path
#   hack/control-plane.sh kubelet builds kubelet (k8s.io/kubernetes, same version) into the cache and
#                                 prints its path
#   hack/control-plane.sh scheduling  builds kube-scheduler and kube-controller-manager, prints their dir
#   hack/control-plane.sh whereabouts  builds Whereabouts' CNI plugin (the cluster benchmark's peer)
#                                 and prints the directory holding it and its CRDs
#   hack/control-plane.sh containerd  fetches containerd 1.7 (Debian trixie's package, read from
#                                 deb.debian.org's index and checked against its SHA-256: bookworm's
#                                 1.6 has no CDI, which DRA needs) and prints the directory holding
#                                 containerd and its runc shim
#   hack/control-plane.sh multus  builds Multus's thin plugin and its entrypoints (multus-cni v4) and
#                                 prints the directory laid out as the upstream image is (the e2e
#                                 tier makes its image from it)
# Binaries are cached in $SPIDERPOOL_CACHE/control-plane/<versions>/ (outside the clone) so CI
# builds them once. The Go sources are only build inputs for the test tier; the product is Rust.
set -euo pipefail
cd "$(dirname "$0")/.."

K8S_VERSION=${K8S_VERSION:-1.34.3}
ETCD_VERSION=${ETCD_VERSION:-3.6.5}
HELM_VERSION=${HELM_VERSION:-3.19.0}
MULTUS_VERSION=${MULTUS_VERSION:-4.3.0}
WHEREABOUTS_VERSION=${WHEREABOUTS_VERSION:-0.9.2}
CACHE=${SPIDERPOOL_CACHE:-$HOME/.cache/spiderpool-rs}
BIN_DIR="$CACHE/control-plane/k8s-$K8S_VERSION-etcd-$ETCD_VERSION-2"
# These builds' Go module and build caches live in the cache too: several GB that only a rebuild
# needs, which CI drops (prune-go) once every binary is built.
export GOMODCACHE=${SPIDERPOOL_GOMODCACHE:-$CACHE/go/mod} GOCACHE=${SPIDERPOOL_GOCACHE:-$CACHE/go/build}
STATE=${CONTROL_PLANE_STATE:-/tmp/spiderpool-control-plane}
PORT=${CONTROL_PLANE_PORT:-16443}
ETCD_PORT=${CONTROL_PLANE_ETCD_PORT:-12379}

log() { echo "control-plane: $*" >&2; }

# The Go module that builds k8s.io/kubernetes commands at $K8S_VERSION: prints its directory.
k8s_module() {
    command -v go >/dev/null || { log "go is not installed"; return 1; }
    local src="$CACHE/control-plane/src-k8s-$K8S_VERSION"
    mkdir -p "$src"
    export GOFLAGS=-mod=mod GOTOOLCHAIN=local
    # k8s.io/kubernetes requires its staging modules at v0.0.0 and replaces them with ./staging
    # paths, which do not exist in the module zip: point each at its published v0.X.Y instead.
    local minor=${K8S_VERSION#*.}
    local staging="0.$minor"
    local gomod
    gomod=$(go mod download -json "k8s.io/kubernetes@v$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
    {
        echo "module spiderpool-rs/control-plane"
        echo
        echo "go 1.24.0"
        echo
        sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/src/.*#replace \1 => \1 v'"$staging"'#p' "$gomod"
    } >"$src/go.mod"
    (
        cd "$src"
        log "resolving k8s.io/kubernetes v$K8S_VERSION (staging v$staging)"
        go get "k8s.io/kubernetes@v$K8S_VERSION" >/dev/null 2>&1 || go get "k8s.io/kubernetes@v$K8S_VERSION" >&2
    ) || return 1
    echo "$src"
}

build() {
    if [ -x "$BIN_DIR/kube-apiserver" ] && [ -x "$BIN_DIR/kubectl" ] && [ -x "$BIN_DIR/etcd" ]; then
        return 0
    fi
    local src minor=${K8S_VERSION#*.}
    src=$(k8s_module) || return 1
    mkdir -p "$BIN_DIR"
    export GOFLAGS=-mod=mod GOTOOLCHAIN=local
    (
        cd "$src"
        log "building kube-apiserver and kubectl (several minutes the first time)"
        # The version the server reports (/version): clients such as Helm check kubeVersion against it.
        local v=k8s.io/component-base/version
        local ldflags="-s -X $v.gitVersion=v$K8S_VERSION -X $v.gitMajor=${K8S_VERSION%%.*} -X $v.gitMinor=${minor%%.*}"
        ldflags="$ldflags -X $v.gitTreeState=clean -X $v.gitCommit=module-proxy-build"
        go build -trimpath -ldflags="$ldflags" -o "$BIN_DIR/kube-apiserver.tmp" k8s.io/kubernetes/cmd/kube-apiserver
        go build -trimpath -ldflags="$ldflags" -o "$BIN_DIR/kubectl.tmp" k8s.io/kubernetes/cmd/kubectl
    )
    local etcd_src="$CACHE/control-plane/src-etcd-$ETCD_VERSION"
    mkdir -p "$etcd_src"
    (
        cd "$etcd_src"
        [ -f go.mod ] || go mod init spiderpool-rs/etcd >/dev/null 2>&1
        log "building etcd v$ETCD_VERSION"
        go get "go.etcd.io/etcd/server/v3@v$ETCD_VERSION" >/dev/null 2>&1 || go get "go.etcd.io/etcd/server/v3@v$ETCD_VERSION"
        go build -trimpath -ldflags=-s -o "$BIN_DIR/etcd.tmp" go.etcd.io/etcd/server/v3
    )
    for b in kube-apiserver kubectl etcd; do mv "$BIN_DIR/$b.tmp" "$BIN_DIR/$b"; done
    log "binaries in $BIN_DIR"
}

prune_go() {
    [ -d "$CACHE/go" ] || return 0
    log "removing the Go caches ($(du -sh "$CACHE/go" | cut -f1)): the binaries are built"
    # The module cache is read-only by design.
    chmod -R u+w "$CACHE/go" 2>/dev/null || true
    rm -rf "$CACHE/go"
    # Runs before the caches moved here filled Go's default ones.
    if [ "${CI:-false}" = true ]; then
        env -u GOCACHE -u GOMODCACHE go clean -cache -modcache 2>/dev/null || true
    fi
}

build_kubelet() {
    local out="$CACHE/control-plane/kubelet-$K8S_VERSION/kubelet"
    if [ ! -x "$out" ]; then
        local src minor=${K8S_VERSION#*.}
        src=$(k8s_module) || return 1
        local v=k8s.io/component-base/version
        mkdir -p "$(dirname "$out")"
        (
            cd "$src"
            export GOFLAGS=-mod=mod GOTOOLCHAIN=local
            log "building kubelet v$K8S_VERSION"
            go build -trimpath -ldflags="-s -X $v.gitVersion=v$K8S_VERSION -X $v.gitMajor=${K8S_VERSION%%.*} -X $v.gitMinor=${minor%%.*}" \
                -o "$out.tmp" k8s.io/kubernetes/cmd/kubelet
        )
        mv "$out.tmp" "$out"
    fi
    echo "$out"
}

# kube-scheduler and kube-controller-manager (for DaemonSet rollouts in the kubelet tier): prints
# the directory holding both.
build_scheduling() {
    local out="$CACHE/control-plane/scheduling-$K8S_VERSION"
    if [ ! -x "$out/kube-scheduler" ] || [ ! -x "$out/kube-controller-manager" ]; then
        local src minor=${K8S_VERSION#*.}
        src=$(k8s_module) || return 1
        local v=k8s.io/component-base/version
        mkdir -p "$out"
        (
            cd "$src"
            export GOFLAGS=-mod=mod GOTOOLCHAIN=local
            for cmd in kube-scheduler kube-controller-manager; do
                log "building $cmd v$K8S_VERSION"
                go build -trimpath -ldflags="-s -X $v.gitVersion=v$K8S_VERSION -X $v.gitMajor=${K8S_VERSION%%.*} -X $v.gitMinor=${minor%%.*}" \
                    -o "$out/$cmd.tmp" "k8s.io/kubernetes/cmd/$cmd"
                mv "$out/$cmd.tmp" "$out/$cmd"
            done
        ) || return 1
    fi
    echo "$out"
}

build_helm() {
    local out="$CACHE/control-plane/helm-$HELM_VERSION/helm"
    if [ ! -x "$out" ]; then
        command -v go >/dev/null || { log "go is not installed"; return 1; }
        local src="$CACHE/control-plane/src-helm-$HELM_VERSION"
        mkdir -p "$src" "$(dirname "$out")"
        (
            cd "$src"
            export GOFLAGS=-mod=mod GOTOOLCHAIN=local
            [ -f go.mod ] || go mod init spiderpool-rs/helm >/dev/null 2>&1
            log "building helm v$HELM_VERSION"
            go get "helm.sh/helm/v3@v$HELM_VERSION" >/dev/null 2>&1 || go get "helm.sh/helm/v3@v$HELM_VERSION"
            go build -trimpath -ldflags=-s -o "$out.tmp" helm.sh/helm/v3/cmd/helm
        )
        mv "$out.tmp" "$out"
    fi
    echo "$out"
}

# Multus's thin plugin as its release image holds it: /thin_entrypoint, /install_multus and
# /usr/src/multus-cni/bin/{multus,passthru} (images/Dockerfile and hack/build-go.sh of
# multus-cni), built from the Go module proxy. Prints the image root.
build_multus() {
    local out="$CACHE/control-plane/multus-$MULTUS_VERSION/rootfs"
    if [ ! -x "$out/thin_entrypoint" ]; then
        command -v go >/dev/null || { log "go is not installed"; return 1; }
        local src="$CACHE/control-plane/src-multus-$MULTUS_VERSION" module=gopkg.in/k8snetworkplumbingwg/multus-cni.v4
        rm -rf "$out.tmp" && mkdir -p "$src" "$out.tmp/usr/src/multus-cni/bin"
        (
            cd "$src"
            export GOFLAGS=-mod=mod GOTOOLCHAIN=local CGO_ENABLED=0
            [ -f go.mod ] || go mod init spiderpool-rs/multus >/dev/null 2>&1
            log "building multus v$MULTUS_VERSION"
            go get "$module@v$MULTUS_VERSION" >/dev/null 2>&1 || go get "$module@v$MULTUS_VERSION"
            local ldflags="-s -X $module/pkg/multus.version=v$MULTUS_VERSION"
            go build -trimpath -ldflags="$ldflags" -o "$out.tmp/usr/src/multus-cni/bin/multus" "$module/cmd/multus"
            go build -trimpath -ldflags="$ldflags" -o "$out.tmp/usr/src/multus-cni/bin/passthru" "$module/cmd/passthru-cni"
            for cmd in thin_entrypoint install_multus; do
                go build -trimpath -ldflags="$ldflags" -o "$out.tmp/$cmd" "$module/cmd/$cmd"
            done
        ) || return 1
        mkdir -p "$out.tmp/tmp" && chmod 1777 "$out.tmp/tmp"
        rm -rf "$out" && mv "$out.tmp" "$out"
    fi
    echo "$out"
}

# Whereabouts (the benchmark's peer IPAM): its CNI plugin and its CRDs, from the Go module proxy.
# Prints the directory holding `whereabouts` and `crds/`.
build_whereabouts() {
    local out="$CACHE/control-plane/whereabouts-$WHEREABOUTS_VERSION"
    if [ ! -x "$out/whereabouts" ]; then
        command -v go >/dev/null || { log "go is not installed"; return 1; }
        local src="$CACHE/control-plane/src-whereabouts-$WHEREABOUTS_VERSION"
        local module=github.com/k8snetworkplumbingwg/whereabouts
        rm -rf "$out.tmp" && mkdir -p "$src" "$out.tmp/crds"
        (
            cd "$src"
            export GOFLAGS=-mod=mod GOTOOLCHAIN=local CGO_ENABLED=0
            [ -f go.mod ] || go mod init spiderpool-rs/whereabouts >/dev/null 2>&1
            log "building whereabouts v$WHEREABOUTS_VERSION"
            go get "$module@v$WHEREABOUTS_VERSION" >/dev/null 2>&1 || go get "$module@v$WHEREABOUTS_VERSION"
            go build -trimpath -ldflags=-s -o "$out.tmp/whereabouts" "$module/cmd"
            local dir
            dir=$(go list -m -f '{{.Dir}}' "$module")
            cp "$dir"/doc/crds/whereabouts.cni.cncf.io_*.yaml "$out.tmp/crds/"
        ) || return 1
        rm -rf "$out" && mv "$out.tmp" "$out"
    fi
    echo "$out"
}

# containerd with CDI for the DRA tests. Go binaries linked against glibc ≥ 2.34 only, so
# trixie's run on bookworm; runc stays bookworm's.
CONTAINERD_SUITE=${CONTAINERD_SUITE:-trixie}
fetch_containerd() {
    local out="$CACHE/containerd-$CONTAINERD_SUITE"
    if [ ! -x "$out/containerd" ]; then
        local mirror=http://deb.debian.org/debian index file sum tmp="$out.tmp"
        index=$(curl -fsS --retry 3 "$mirror/dists/$CONTAINERD_SUITE/main/binary-amd64/Packages.xz" | xz -dc) ||
            { log "cannot read $CONTAINERD_SUITE's package index"; return 1; }
        read -r file sum < <(printf '%s\n' "$index" | awk '
            $1 == "Package:" { m = ($2 == "containerd") } m && $1 == "Filename:" { f = $2 } m && $1 == "SHA256:" { s = $2 }
            m && f && s && !done { print f, s; done = 1 }')
        [ -n "$file" ] || { log "no containerd in $CONTAINERD_SUITE's index"; return 1; }
        rm -rf "$tmp" && mkdir -p "$tmp/x"
        log "downloading $file"
        curl -fsS --retry 3 -o "$tmp/c.deb" "$mirror/$file" || { log "cannot download $file"; return 1; }
        echo "$sum  $tmp/c.deb" | sha256sum -c --quiet - || { log "$file does not match the index's SHA-256"; return 1; }
        dpkg-deb -x "$tmp/c.deb" "$tmp/x"
        mkdir -p "$tmp/bin"
        mv "$tmp/x/usr/bin/containerd" "$tmp/x/usr/bin/containerd-shim-runc-v2" "$tmp/x/usr/bin/ctr" "$tmp/bin/"
        "$tmp/bin/containerd" --version >&2
        rm -rf "$out" && mv "$tmp/bin" "$out" && rm -rf "$tmp"
    fi
    echo "$out"
}

wait_for() { # wait_for SECONDS CMD...
    local deadline=$((SECONDS + $1)); shift
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $deadline ] || return 1
        sleep 0.2
    done
}

certs() {
    local d=$STATE/pki
    mkdir -p "$d"
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=spiderpool-test-ca" \
        -keyout "$d/ca.key" -out "$d/ca.crt" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" \
        -keyout "$d/server.key" -out "$d/server.csr" 2>/dev/null
    # 10.0.2.2: the host's loopback as QEMU's user network shows it to a guest (hack/vm-cluster-test.sh).
    printf 'subjectAltName=IP:127.0.0.1,IP:10.0.2.2,DNS:localhost\n' >"$d/san.ext"
    openssl x509 -req -in "$d/server.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
        -days 2 -extfile "$d/san.ext" -out "$d/server.crt" 2>/dev/null
    openssl genrsa -out "$d/sa.key" 2048 2>/dev/null
    openssl rsa -in "$d/sa.key" -pubout -out "$d/sa.pub" 2>/dev/null
    # Static tokens: the admin (system:masters) for tests and one user per test identity.
    local token
    token=$(openssl rand -hex 16)
    echo "$token,admin,admin,system:masters" >"$d/tokens.csv"
    echo "$token" >"$d/admin.token"
    chmod 600 "$d"/*.key "$d/tokens.csv" "$d/admin.token"
}

kubeconfig() {
    local ca
    ca=$(base64 -w0 <"$STATE/pki/ca.crt")
    cat >"$STATE/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: https://127.0.0.1:$PORT
    certificate-authority-data: $ca
users:
- name: admin
  user:
    token: $(cat "$STATE/pki/admin.token")
contexts:
- name: test
  context: {cluster: test, user: admin}
current-context: test
EOF
    chmod 600 "$STATE/kubeconfig"
}

up() {
    build
    if [ -f "$STATE/apiserver.pid" ] && kill -0 "$(cat "$STATE/apiserver.pid")" 2>/dev/null; then
        echo "$STATE/kubeconfig"
        return 0
    fi
    down >/dev/null 2>&1 || true
    mkdir -p "$STATE"
    chmod 700 "$STATE"
    certs
    kubeconfig
    "$BIN_DIR/etcd" --data-dir "$STATE/etcd" --name test \
        --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
        --listen-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" \
        --initial-advertise-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" \
        --initial-cluster "test=http://127.0.0.1:$((ETCD_PORT + 1))" \
        --unsafe-no-fsync --log-level warn >"$STATE/etcd.log" 2>&1 &
    echo $! >"$STATE/etcd.pid"
    wait_for 30 curl -sf "http://127.0.0.1:$ETCD_PORT/health" || { log "etcd did not start:"; tail -20 "$STATE/etcd.log" >&2; return 1; }
    local d=$STATE/pki
    # MutatingAdmissionPolicy (the chart's rdma-resource-inject): beta and off by default before
    # 1.36, where it is GA (v1). DRADeviceTaints (the DRA devices' unhealthy taints): alpha and off
    # before 1.36 (kube-scheduler gets it too, tests/src/cluster.rs Scheduling), whose scheduler
    # then also waits for DeviceTaintRules (resource.k8s.io/v1alpha3). DRAConsumableCapacity (RDMA
    # devices shared by capacity): alpha and off before 1.36.
    local admission=()
    local minor=${K8S_VERSION#*.}
    minor=${minor%%.*}
    if [ "$minor" -lt 36 ]; then
        admission=(--feature-gates=MutatingAdmissionPolicy=true,DRADeviceTaints=true,DRAConsumableCapacity=true --runtime-config=admissionregistration.k8s.io/v1beta1=true,resource.k8s.io/v1alpha3=true)
    fi
    "$BIN_DIR/kube-apiserver" "${admission[@]}" \
        --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
        --bind-address 127.0.0.1 --secure-port "$PORT" \
        --cert-dir "$d" --tls-cert-file "$d/server.crt" --tls-private-key-file "$d/server.key" \
        --client-ca-file "$d/ca.crt" --token-auth-file "$d/tokens.csv" \
        --service-cluster-ip-range 10.0.0.0/24 --authorization-mode RBAC \
        --service-account-issuer https://kubernetes.default.svc \
        --service-account-key-file "$d/sa.pub" --service-account-signing-key-file "$d/sa.key" \
        --allow-privileged=true --disable-admission-plugins ServiceAccount \
        --max-requests-inflight 2000 --max-mutating-requests-inflight 1000 \
        --enable-priority-and-fairness=false \
        >"$STATE/apiserver.log" 2>&1 &
    echo $! >"$STATE/apiserver.pid"
    if ! wait_for 90 "$BIN_DIR/kubectl" --kubeconfig "$STATE/kubeconfig" get --raw /readyz; then
        log "kube-apiserver did not become ready:"
        tail -30 "$STATE/apiserver.log" >&2
        return 1
    fi
    echo "$STATE/kubeconfig"
}

down() {
    for p in apiserver etcd; do
        if [ -f "$STATE/$p.pid" ]; then
            kill "$(cat "$STATE/$p.pid")" 2>/dev/null || true
            wait_for 10 bash -c "! kill -0 $(cat "$STATE/$p.pid")" || kill -9 "$(cat "$STATE/$p.pid")" 2>/dev/null || true
        fi
    done
    rm -rf "$STATE"
}

case "${1:-}" in
build) build ;;
prune-go) prune_go ;;
up) up ;;
down) down ;;
bin) echo "$BIN_DIR" ;;
helm) build_helm ;;
kubelet) build_kubelet ;;
scheduling) build_scheduling ;;
multus) build_multus ;;
whereabouts) build_whereabouts ;;
containerd) fetch_containerd ;;
*) echo "usage: $0 build|up|down|bin|helm|kubelet|scheduling|multus|whereabouts|containerd" >&2; exit 2 ;;
esac
