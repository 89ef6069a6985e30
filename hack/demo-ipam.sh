#!/usr/bin/env bash
# The IPAM plugin on its own, as a container runtime calls it: dual-stack ADDs for three
# containers, a repeated ADD, a DEL and an ADD that shows the released address waiting its turn.
# Needs no root: the store goes to a temporary directory.
set -euo pipefail
cd "$(dirname "$0")/.."
source hack/lib.sh
# The plugin as it ships: static.
plugin="$(static_plugins release)/spiderpool"
data=$(mktemp -d)
trap 'rm -rf "$data"' EXIT

netconf=$(cat <<JSON
{"cniVersion": "1.0.0", "name": "demo-net", "type": "macvlan", "master": "eth0",
 "ipam": {"type": "spiderpool",
   "pools": [{"name": "v4a", "subnet": "10.6.0.0/16", "ips": ["10.6.0.10-10.6.3.250"], "excludeIPs": ["10.6.0.20"],
              "gateway": "10.6.0.1", "routes": [{"dst": "0.0.0.0/0", "gw": "10.6.0.1"}]},
             {"name": "v6a", "subnet": "fd00:6::/64", "ips": ["fd00:6::10-fd00:6::ffff"], "gateway": "fd00:6::1"}],
   "default_ipv4_ippool": ["v4a"], "default_ipv6_ippool": ["v6a"], "dataDir": "$data"}}
JSON
)

cni() { # VERB CONTAINER
    printf '%-4s %-6s -> ' "$1" "$2"
    echo "$netconf" | SPIDERPOOL_TRUSTED_DIRS=$data CNI_COMMAND=$1 CNI_CONTAINERID=$2 CNI_NETNS=/var/run/netns/$2 CNI_IFNAME=eth0 \
        CNI_PATH=/opt/cni/bin CNI_ARGS="K8S_POD_NAMESPACE=demo;K8S_POD_NAME=$2;IgnoreUnknown=1" "$plugin" \
        && echo " (exit 0)" || echo " (exit $?)"
}

cni ADD pod-a
cni ADD pod-b
cni ADD pod-a   # repeated ADD: the same answer
cni DEL pod-a
cni DEL pod-a   # DEL twice: still fine
cni ADD pod-c   # gets a fresh address, not pod-a's just-released one
