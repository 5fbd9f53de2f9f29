#!/usr/bin/env bash
# Multi-host test (issue 16): four network namespaces joined by a bridge, one replica per
# namespace plus a client namespace, on 10.77.0.0/24 (addresses created here, traffic only
# among them). Drives a workload, kills one namespace's replica, checks every operation.
# Needs root (or CAP_NET_ADMIN) and iproute2. Usage: run.sh PATH/TO/splitbft
# Everything it creates is removed on exit, also on failure.
set -euo pipefail
BIN=$(realpath "${1:?usage: run.sh PATH/TO/splitbft}")
TAG="sb$$"                 # unique per run: names never collide with anything else
BR="${TAG}br"
NS=("${TAG}r0" "${TAG}r1" "${TAG}r2" "${TAG}r3" "${TAG}c")
ADDR=(10.77.0.10 10.77.0.11 10.77.0.12 10.77.0.13 10.77.0.20)
WORK=$(mktemp -d)
PIDS=()

cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    for ns in "${NS[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
    ip link del "$BR" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

ip link add "$BR" type bridge
ip link set "$BR" up
for i in "${!NS[@]}"; do
    ns=${NS[$i]}
    ip netns add "$ns"
    ip link add "${TAG}v$i" type veth peer name eth0 netns "$ns"
    ip link set "${TAG}v$i" master "$BR" up
    ip -n "$ns" addr add "${ADDR[$i]}/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
done

"$BIN" keygen --replicas 4 --clients 4 --hosts "${ADDR[0]},${ADDR[1]},${ADDR[2]},${ADDR[3]}" \
    --base-port 7400 --metrics-base-port 9400 --out "$WORK/cluster" >/dev/null
for i in 0 1 2 3; do
    ip netns exec "${NS[$i]}" "$BIN" replica --config "$WORK/cluster/replica-$i/cluster.toml" --id "$i" \
        2>"$WORK/replica-$i.log" &
    PIDS+=($!)
done

client() { ip netns exec "${NS[4]}" "$BIN" client --config "$WORK/cluster/clients/cluster.toml" --timeout-s 20 "$@"; }

# Wait for the cluster (first request also waits for every replica to come up).
for _ in $(seq 1 100); do
    if client put warmup 1 >/dev/null 2>&1; then break; fi
    sleep 0.3
done
client get warmup >/dev/null || { echo "cluster in namespaces never served"; tail -n 5 "$WORK"/replica-*.log; exit 1; }

check_all() {   # every key written so far must read back its value
    local upto=$1
    for k in $(seq 1 "$upto"); do
        got=$(client get "k$k")
        [ "$got" = "v$k" ] || { echo "k$k: expected v$k, got '$got'"; exit 1; }
    done
}
for k in $(seq 1 20); do client put "k$k" "v$k" >/dev/null; done
check_all 20
ip netns exec "${NS[4]}" "$BIN" status --config "$WORK/cluster/clients/cluster.toml"

# Kill the primary's namespace replica (replica 0, view 0): a view change must follow.
kill -9 "${PIDS[0]}"
for k in $(seq 21 40); do client put "k$k" "v$k" >/dev/null; done
check_all 40
scan=$(client scan k --limit 100 | wc -l)
[ "$scan" -eq 40 ] || { echo "scan found $scan keys, expected 40"; exit 1; }
# status reports replica 0 down and the others healthy (at most f down: exit 0).
ip netns exec "${NS[4]}" "$BIN" status --config "$WORK/cluster/clients/cluster.toml" | tee "$WORK/status.txt"
grep -q '^0 .*down' "$WORK/status.txt"
[ "$(grep -c ' ok' "$WORK/status.txt")" -eq 3 ]
echo "netns test: 40 writes and 40 reads across 4 namespaces, replica 0 killed after 20: all correct"
