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
