#!/usr/bin/env bash
# Requests per second of the same axum app without and with RateLimitLayer (local
# provider, a rate it never reaches), over loopback with wrk. Bounded: ROUNDS x 2 runs of
# DURATION each.
#
#   scripts/wrk_layer.sh                 # defaults: 5 rounds of 5 s each way, 64 connections
#   DURATION=5s ROUNDS=2 scripts/wrk_layer.sh
#
# Needs wrk (`apt-get install wrk`). On a machine with two or more CPUs the server is
# pinned to CPU 0 with one tokio worker and wrk to CPU 1, so the two do not fight over a
# core; the bare and layered servers never run at the same time, and they alternate. Prints
# each run, then the ratio of the median throughputs and what the layer adds to the
# server's user CPU time per request (target: layer >= 97% of bare). On a machine shared
# with other work, trust the CPU figure: throughput swings with whatever else runs.
set -euo pipefail

DURATION=${DURATION:-5s}
ROUNDS=${ROUNDS:-5}
CONNECTIONS=${CONNECTIONS:-64}
PORT=${PORT:-3917}
HOST=127.0.0.1 # loopback only

cd "$(dirname "$0")/.."
command -v wrk >/dev/null || { echo "wrk not found: apt-get install wrk" >&2; exit 1; }

cargo build --release --quiet --example axum --features axum
BIN=target/release/examples/axum

SERVER_PIN=()
CLIENT_PIN=()
if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then
    SERVER_PIN=(taskset -c 0)
    CLIENT_PIN=(taskset -c 1)
    export TOKIO_WORKER_THREADS=1
fi

server=""
cleanup() { [ -n "$server" ] && kill "$server" 2>/dev/null || true; }
trap cleanup EXIT

# run MODE: starts the server, runs wrk once, prints
# "requests/s user-CPU-us/request system-CPU-us/request" for the server process. The
# layer runs in user space; the kernel's share (the TCP stack) is most of a request's CPU
# and swings with whatever else the machine does, so user time is the signal.
run() {
    "${SERVER_PIN[@]}" "$BIN" --bench-target "$1" "$PORT" >/dev/null &
    server=$!
    for _ in $(seq 1 100); do
        curl -s -o /dev/null "http://$HOST:$PORT/" && break
        sleep 0.05
    done
    local out rps requests u0 s0 u1 s1
    read -r u0 s0 < <(awk '{print $14, $15}' "/proc/$server/stat")
    out=$("${CLIENT_PIN[@]}" wrk -t1 -c"$CONNECTIONS" -d"$DURATION" "http://$HOST:$PORT/")
    read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$server/stat")
    kill "$server"
    wait "$server" 2>/dev/null || true
    server=""
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    requests=$(awk '/requests in/ {print $1}' <<<"$out")
    awk -v r="$rps" -v n="$requests" -v u="$((u1 - u0))" -v s="$((s1 - s0))" -v hz="$(getconf CLK_TCK)" \
        'BEGIN { printf "%s %.2f %.2f\n", r, 1e6 * u / hz / n, 1e6 * s / hz / n }'
}

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

bare=()
layer=()
bare_user=()
layer_user=()
bare_total=()
for round in $(seq 1 "$ROUNDS"); do
    read -r b bu bs <<<"$(run bare)"
    read -r l lu ls <<<"$(run layer)"
    echo "round $round: bare $b req/s (CPU/req: user $bu us, sys $bs us), layer $l req/s (user $lu us, sys $ls us)"
    bare+=("$b")
    layer+=("$l")
    bare_user+=("$bu")
    layer_user+=("$lu")
    bare_total+=("$(awk -v u="$bu" -v s="$bs" 'BEGIN {print u + s}')")
done
mb=$(printf '%s\n' "${bare[@]}" | median)
ml=$(printf '%s\n' "${layer[@]}" | median)
ub=$(printf '%s\n' "${bare_user[@]}" | median)
ul=$(printf '%s\n' "${layer_user[@]}" | median)
tb=$(printf '%s\n' "${bare_total[@]}" | median)
awk -v b="$mb" -v l="$ml" -v ub="$ub" -v ul="$ul" -v tb="$tb" 'BEGIN {
    printf "median throughput: bare %.0f req/s, layer %.0f req/s, layer/bare = %.1f%%\n", b, l, 100 * l / b
    printf "median user CPU: bare %.2f us/req, layer %.2f us/req; bare total CPU %.2f us/req\n", ub, ul, tb
    printf "a CPU-bound server with the layer keeps %.1f%% of its req/s (user-time delta over bare total)\n", 100 * tb / (tb + ul - ub)
}'
