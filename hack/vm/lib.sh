# Sourced by guest scripts (hack/vm-test.sh puts it at /guest/lib.sh): what several of them share.

# start_device_plugin CONFIG_YAML: fake-kubelet (its events in /tmp/kubelet.log) and
# `spiderpool-agent device-plugin` with that config (log /tmp/agent.log); sets $agent to its PID.
start_device_plugin() {
    local dir=/var/lib/kubelet/device-plugins
    printf '%s\n' "$1" > /tmp/dp.yaml
    mkdir -p "$dir"
    fake-kubelet "$dir" > /tmp/kubelet.log 2>&1 &
    sleep 0.3
    spiderpool-agent device-plugin --config /tmp/dp.yaml 2> /tmp/agent.log &
    agent=$!
}

# first_allocation: waits up to 10 s for fake-kubelet's Allocate; prints its event (JSON).
first_allocation() {
    local _
    for _ in $(seq 100); do
        grep -q '"event":"allocate"' /tmp/kubelet.log && break
        sleep 0.1
    done
    jq -c 'select(.event == "allocate")' /tmp/kubelet.log | head -n 1
}

# busybox date has no %N; bash's clock in microseconds does.
now_ms() { local t=${EPOCHREALTIME/./}; echo $((t / 1000)); }

# kubelet_saw SECONDS JQ-FILTER: whether, within SECONDS, fake-kubelet's log (/tmp/kubelet.log)
# holds a line the filter selects.
kubelet_saw() {
    local deadline=$(($(now_ms) + $1 * 1000))
    while [ "$(now_ms)" -le "$deadline" ]; do
        jq -c "select($2)" /tmp/kubelet.log 2>/dev/null | grep -q . && return 0
        sleep 0.05
    done
    return 1
}

# roce_gid NETNS DEVICE IPV4: the index of the RoCE v2 GID of IPV4 on DEVICE's port 1, as NETNS sees it.
roce_gid() {
    local want i
    want=$(printf '0000:0000:0000:0000:0000:ffff:%02x%02x:%02x%02x' ${3//./ })
    for i in $(seq 0 31); do
        [ "$(ip netns exec "$1" cat "/sys/class/infiniband/$2/ports/1/gids/$i" 2>/dev/null)" = "$want" ] && { echo "$i"; return 0; }
    done
    return 1
}

# rc_pingpong NETNS_A IP_A DEV_A NETNS_B IP_B DEV_B: 200 ibv_rc_pingpong RC exchanges from A to B,
# each on its own device and the GID of its address; prints the client's output, fails with it.
rc_pingpong() {
    local ga gb server out
    ga=$(roce_gid "$1" "$3" "$2") && gb=$(roce_gid "$4" "$6" "$5") || { echo "no GID for a pod's address"; return 1; }
    ip netns exec "$4" timeout 30 ibv_rc_pingpong -d "$6" -g "$gb" -n 200 > /tmp/srv.log 2>&1 &
    server=$!
    sleep 1
    out=$(ip netns exec "$1" timeout 30 ibv_rc_pingpong -d "$3" -g "$ga" -n 200 "$5" 2>&1) || { echo "$out"; return 1; }
    wait "$server" || { echo "the server side failed: $(cat /tmp/srv.log)"; return 1; }
    echo "$out"
}
