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
#
# Runs on this shared VM differ by more than a reload does, so the reload and burn runs are
# also split within themselves: the requests that overlap a reload (SIGHUP to the proxy's
# `memory of the load released` line) or a burn, against the other requests of the same run
# (`endpoints_scale.py split`). "in/out" below: p99 inside those windows / p99 outside, µs,
# and their ratio; the summary gives the median ratio over the rounds.
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

load() { "${PY[@]}" load --port $LISTEN --host svc-0.bench --rps "$RPS" --seconds "$SECONDS_LOAD" "$@"; }
now() { date +%s.%N; }
# "p99 inside / p99 outside (requests inside)" of a recorded run and its windows
split() { "${PY[@]}" split --brief --record "$1" --windows "$2"; }
# the Unix times of the proxy log lines that say "$1", one a line
log_times() {
  grep "$1" "$RUN/proxy.log" | cut -d' ' -f1 |
    python3 -c 'import sys,datetime; [print(datetime.datetime.fromisoformat(l.strip().replace("Z","+00:00")[:26]+"+00:00").timestamp()) for l in sys.stdin]'
}
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
    : >"$RUN/hups"
    hup() {
      n=$((n + 1))
      cp "$RUN/v$((n % 2)).yaml" "$RUN/next.yaml" && mv "$RUN/next.yaml" "$RUN/config.yaml"
      now >>"$RUN/hups"
      kill -HUP "$pid"
    }
    : >"$RUN/burns"
    burn() {
      local t
      t=$(now)
      "${PY[@]}" burn --threads 2 --seconds "${BURN_S:-0.6}"
      echo "$t $(now)" >>"$RUN/burns"
    }
    quiet=$(load | field)
    load --record "$RUN/reload.rec" >"$RUN/reload.json" & l=$!
    every2 hup
    wait $l
    reload=$(field <"$RUN/reload.json")
    load --record "$RUN/burn.rec" >"$RUN/burn.json" & l=$!
    every2 burn
    wait $l
    burn=$(field <"$RUN/burn.json")
    reloads=$(grep -c "configuration reloaded" "$RUN/proxy.log" || true)
    kill $pid; wait $pid 2>/dev/null || true
    paste -d' ' "$RUN/hups" <(log_times "memory of the load released") >"$RUN/reload.windows"
    echo "round $round $bin | none $quiet | reload $reload ($reloads reloads) in/out $(split "$RUN/reload.rec" "$RUN/reload.windows") | burn $burn in/out $(split "$RUN/burn.rec" "$RUN/burns")"
  done
done | tee "$RUN/rounds.txt"
echo "median p99 (µs): none / reload every 2 s / CPU burn every 2 s; median ratio of the p99 inside the reloads (burns) to the p99 outside them in the same run"
for bin in $BINS; do
  med() { grep " $bin |" "$RUN/rounds.txt" | awk -v k="$1" -v o="$2" '{ for (i = 1; i <= NF; i++) if ($i == k) print $(i + o) }' | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
  # the median in/out ratio of the reload runs (1) or of the burn runs (2)
  ratio() { grep " $bin |" "$RUN/rounds.txt" | awk -v n="$1" '{ k = 0; for (i = 1; i <= NF; i++) if ($i == "in/out") { k++; if (k == n) print $(i + 3) } }' | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
  echo "$bin: $(med none 2) / $(med reload 2) / $(med burn 2); p99 inside / outside: reloads $(ratio 1), burns $(ratio 2)"
done
echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
