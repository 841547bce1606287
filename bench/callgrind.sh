#!/usr/bin/env bash
# Exact user-space instructions per proxied request (valgrind's callgrind), for changes too
# small for the noise of wall-clock benchmarks on a shared machine.
#
#   bash bench/callgrind.sh [h1|h2c] [BINARY]      # default: h1, target/release/tripline
#   bash bench/callgrind.sh h2c haproxy            # the same count for HAProxy (shared config)
#   CONFIG=bench/peers-features.yaml bash bench/callgrind.sh h1 [BINARY]
#   EXTRA="--access-log /tmp/a.log" bash bench/callgrind.sh h1 [BINARY]   # more `run` flags
#
# Starts the harness's nginx upstream and the binary under callgrind with $CONFIG (default
# bench/peers.yaml; bench/peers-features.yaml is the same route with header set/remove, a 0%
# fault and a rate limit that never limits; HAProxy ignores CONFIG), warms up, zeroes the
# counters, sends 20,000 requests (h2load: 16 HTTP/1.1 connections, or 8 h2c connections x 8
# streams) and prints instructions per request. The profile is left in
# /tmp/callgrind.<tripline or haproxy>.<mode>.out.1 for callgrind_annotate (whatever the CONFIG,
# so copy it before the next run).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
MODE=${1:-h1}
BIN=${2:-$HERE/../target/release/tripline}
CONFIG=${CONFIG:-$HERE/peers.yaml}
N=20000
NAME=tripline; [ "$BIN" = haproxy ] && NAME=haproxy
OUT=/tmp/callgrind.$NAME.$MODE.out
# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"

start_upstream
rm -f "$OUT" "$OUT".*
if [ "$BIN" = haproxy ]; then
  # One thread, HTTP/1.1 on 18090 and h2c on 18091, the same upstream (the harness's config).
  valgrind --tool=callgrind --callgrind-out-file="$OUT" haproxy -db -f "$PEERS/conf/proxy-haproxy.cfg" \
    >"$RUN/haproxy.log" 2>&1 &
  if [ "$MODE" = h1 ]; then URL=http://127.0.0.1:18090/; else URL=http://127.0.0.1:18091/; fi
else
  # shellcheck disable=SC2086 # EXTRA is a list of flags
  valgrind --tool=callgrind --callgrind-out-file="$OUT" "$BIN" run -c "$CONFIG" --workers 1 \
    --log-level error ${EXTRA:-} >"$RUN/tripline.log" 2>&1 &
  URL=http://127.0.0.1:18130/
fi
T=$!
PIDS+=($T)
for _ in $(seq 100); do curl -sf -o /dev/null "$URL" && break; sleep 0.3; done
if [ "$MODE" = h1 ]; then LOAD=(-c16 -m1 --h1); else LOAD=(-c8 -m8); fi
h2load -n 2000 "${LOAD[@]}" "$URL" >/dev/null
callgrind_control -z "$T" >/dev/null
h2load -n "$N" "${LOAD[@]}" "$URL" | grep '^requests:'
callgrind_control -d "$T" >/dev/null
total=$(callgrind_annotate "$OUT.1" 2>/dev/null | awk '/PROGRAM TOTALS/{gsub(",","",$1); print $1}')
echo "$MODE: $((total / N)) instructions per request ($OUT.1)"
