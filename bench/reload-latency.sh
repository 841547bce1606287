#!/usr/bin/env bash
# Request latency while the config reloads, binaries side by side (issue 17: "request latency
# unaffected during the reload"). Same machine, same run, rounds alternating the binaries.
#
#   BINS="/tmp/before /tmp/after" ROUNDS=4 bash bench/reload-latency.sh
#
# Per round and binary: starts it (`--workers 2`) on SERVICES services x 10 endpoints (the
# config of bench/endpoints-scale.sh), then runs the fixed-rate client of that bench (RPS
# requests a second on 8 keep-alive connections, SECONDS_LOAD s) against the first service
# three times: without reloads, with a reload (SIGHUP, alternating two variants of the config
# that change every cluster) started every 2 s, and, as the control, with two processes that
# are not the proxy spinning BURN_S s every 2 s (what a reload's CPU does to the machine by
# itself). Prints p50 / p99 / max in µs per run and the median p99 per binary and case.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
BINS=${BINS:-$HERE/../target/release/tripline}
ROUNDS=${ROUNDS:-3}
SERVICES=${SERVICES:-10000}
RPS=${RPS:-500}
SECONDS_LOAD=${SECONDS_LOAD:-10}
LISTEN=18400
UPSTREAM=18410
ADMIN=127.0.0.1:18499
PY=(python3 "$HERE/endpoints_scale.py")
RUN=$(mktemp -d /tmp/tripline-reload-lat.XXXXXX)
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -n "${KEEP:-}" ] || rm -rf "$RUN"
}
trap cleanup EXIT

"${PY[@]}" gen --services "$SERVICES" --listen $LISTEN --upstream $UPSTREAM --variant 0 --out "$RUN/v0.yaml"
"${PY[@]}" gen --services "$SERVICES" --listen $LISTEN --upstream $UPSTREAM --variant 1 --out "$RUN/v1.yaml"
"${PY[@]}" upstream --port $UPSTREAM --count 10 >"$RUN/upstream.log" 2>&1 &
PIDS+=($!)

load() { "${PY[@]}" load --port $LISTEN --host svc-0.bench --rps "$RPS" --seconds "$SECONDS_LOAD"; }
field() { python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["p50_us"], d["p99_us"], d["max_us"])'; }
# every 2 s, while the load runs: "$@"
every2() {
  local _
  for _ in $(seq $(( ${SECONDS_LOAD%.*} / 2 ))); do sleep 1; "$@"; sleep 1; done
}

for round in $(seq "$ROUNDS"); do
  for bin in $BINS; do
    cp "$RUN/v0.yaml" "$RUN/config.yaml"
    "$bin" run -c "$RUN/config.yaml" --workers 2 --admin $ADMIN --watch-interval 1h --log-level info \
      >"$RUN/proxy.log" 2>&1 &
    pid=$!
    deadline=$((SECONDS + 120))
    until curl -sf -o /dev/null "http://$ADMIN/ready"; do
      [ $SECONDS -lt $deadline ] || { echo "$bin not ready" >&2; exit 1; }
      sleep 0.05
    done
    # A binary that fills its reload cache after it is ready: wait for it, as a proxy that has
    # been up for a few seconds would have.
    if grep -q "documents kept for reloads" "$bin" 2>/dev/null; then
      until grep -q "documents kept for reloads" "$RUN/proxy.log"; do
        [ $SECONDS -lt $deadline ] || { echo "$bin: no reload cache" >&2; exit 1; }
        sleep 0.05
      done
    fi
    sleep 1
    n=0
    hup() {
      n=$((n + 1))
      cp "$RUN/v$((n % 2)).yaml" "$RUN/next.yaml" && mv "$RUN/next.yaml" "$RUN/config.yaml"
      kill -HUP "$pid"
    }
    quiet=$(load | field)
    load >"$RUN/reload.json" & l=$!
    every2 hup
    wait $l
    reload=$(field <"$RUN/reload.json")
    load >"$RUN/burn.json" & l=$!
    every2 "${PY[@]}" burn --threads 2 --seconds "${BURN_S:-0.6}"
    wait $l
    burn=$(field <"$RUN/burn.json")
    reloads=$(grep -c "configuration reloaded" "$RUN/proxy.log" || true)
    kill $pid; wait $pid 2>/dev/null || true
    echo "round $round $bin | none $quiet | reload $reload ($reloads reloads) | burn $burn"
  done
done | tee "$RUN/rounds.txt"
echo "median p99 (µs): none / reload every 2 s / CPU burn every 2 s"
for bin in $BINS; do
  med() { grep " $bin |" "$RUN/rounds.txt" | awk -v k="$1" '{ for (i = 1; i <= NF; i++) if ($i == k) print $(i + 2) }' | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
  echo "$bin: $(med none) / $(med reload) / $(med burn)"
done
echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
