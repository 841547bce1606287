#!/usr/bin/env bash
# Memory, start-up and reload time against the number of endpoints (issue 17), and request
# latency while reloads happen.
#
#   cargo build --release
#   bash bench/endpoints-scale.sh                          # N = 1, 1000, 10000 services x 10 endpoints
#   SERVICES="1 10000" RELOADS=5 LATENCY=1 BIN=/tmp/old-tripline bash bench/endpoints-scale.sh
#
# Per N: generates a config (bench/endpoints_scale.py gen: per service a STATIC ServiceEntry
# with 10 endpoints, a VirtualService, a DestinationRule with pool limits and outlier
# detection, a ResiliencePolicy with destination and endpoint breakers and latency ejection),
# starts the release binary with `--workers 2` and prints one line:
#   ready_s     from exec to the first `200` from the admin `/ready` (polled every 10 ms)
#   rss_mib     VmRSS 2 s after ready (after cache_s for a binary that fills a reload cache);
#               hwm_mib: VmHWM (the peak) by then
#   per_ep_b    (RSS - RSS of the N=1 run) / (10 x (N - 1)): what each endpoint (and its share
#               of its service) costs; needs N=1 in SERVICES, first
#   reload_s    median of RELOADS reloads: from SIGHUP to the proxy's `configuration reloaded`
#               log line, written once the new config is in force (the log is polled every
#               5 ms); the config alternates between two variants (every cluster's connect
#               timeout changes, service 1 gains an endpoint)
#   rss_after   VmRSS after the reloads
#   cleanup_s   median time the proxy took after each reload to free the load and return the
#               allocator's free pages (its `cleanup_ms`; `-` for a binary that does not log
#               it); the next reload waits for it, so it is not in anyone's reload_s
#   cache_s     from exec to the proxy's `documents kept for reloads` line: the reload cache
#               it fills after it is ready, at low priority (`-` for a binary without one)
# With LATENCY=1, for the largest N: a fixed-rate open-loop client (500 requests/s on 8
# keep-alive connections, 10 s) against service 0 and against service N-1 (the last virtual
# host), first with no reload, then with a reload every 2 s; p50 / p99 / max in µs, measured
# from when each request was due; then, as a control, the same load while two processes that
# are not the proxy burn about a reload's CPU every 2 s (BURN_S seconds each). Bounded: every load run is RPS x SECONDS requests and is
# cut after SECONDS + 30 s.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
BIN=${BIN:-$HERE/../target/release/tripline}
SERVICES=${SERVICES:-"1 1000 10000"}
RELOADS=${RELOADS:-5}
LATENCY=${LATENCY:-0}
RPS=${RPS:-500}
SECONDS_LOAD=${SECONDS_LOAD:-10}
LISTEN=18400
UPSTREAM=18410
ADMIN=127.0.0.1:18499
PY=(python3 "$HERE/endpoints_scale.py")
RUN=$(mktemp -d /tmp/tripline-scale.XXXXXX)
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -n "${KEEP:-}" ] || rm -rf "$RUN"
}
trap cleanup EXIT

now() { echo "$EPOCHREALTIME"; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }'; }
kib() { awk -v k="$2" '$1 == k":" { print $2 }' "/proc/$1/status"; }
median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
reloaded() { grep -c "configuration reloaded" "$RUN/proxy.log" || true; }
released() { grep -c "memory of the load released" "$RUN/proxy.log" || true; }

# reload N: puts the other variant in place, sends SIGHUP and waits for the N-th reload line.
reload() {
  local n=$1 pid=$2 svc=$3 t0 deadline
  cp "$RUN/v$((n % 2)).$svc.yaml" "$RUN/next.yaml" && mv "$RUN/next.yaml" "$RUN/config.yaml"
  t0=$(now)
  kill -HUP "$pid"
  deadline=$((SECONDS + ${WAIT:-120}))
  until [ "$(reloaded)" -ge "$n" ]; do
    [ $SECONDS -lt $deadline ] || { echo "reload $n did not finish within ${WAIT:-120} s" >&2; tail "$RUN/proxy.log" >&2; exit 1; }
    sleep 0.005
  done
  since "$t0"
  # Then the proxy frees the load (a binary that logs it: wait for the line, so that the next
  # SIGHUP does not wait for this cleanup inside its own time).
  deadline=$((SECONDS + 5))
  while [ "$(released)" -lt "$n" ] && { [ "$(released)" -gt 0 ] || [ $SECONDS -lt $deadline ]; }; do
    sleep 0.005
  done
}

"${PY[@]}" upstream --port $UPSTREAM --count 10 >"$RUN/upstream.log" 2>&1 &
PIDS+=($!)
base_kib=""
largest=""
printf '%-8s %-9s %8s %8s %8s %9s %8s %9s %9s %8s\n' services endpoints ready_s rss_mib hwm_mib per_ep_b reload_s rss_after cleanup_s cache_s
for svc in $SERVICES; do
  largest=$svc
  "${PY[@]}" gen --services "$svc" --listen $LISTEN --upstream $UPSTREAM --variant 0 --out "$RUN/v0.$svc.yaml"
  "${PY[@]}" gen --services "$svc" --listen $LISTEN --upstream $UPSTREAM --variant 1 --out "$RUN/v1.$svc.yaml"
  cp "$RUN/v0.$svc.yaml" "$RUN/config.yaml"
  t0=$(now)
  "$BIN" run -c "$RUN/config.yaml" --workers 2 --admin $ADMIN --watch-interval 1h --log-level info \
    >"$RUN/proxy.log" 2>&1 &
  pid=$!
  PIDS+=($pid)
  deadline=$((SECONDS + ${WAIT:-120}))
  until curl -sf -o /dev/null "http://$ADMIN/ready"; do
    [ $SECONDS -lt $deadline ] || { echo "not ready within ${WAIT:-120} s" >&2; tail "$RUN/proxy.log" >&2; exit 1; }
    sleep 0.01
  done
  ready=$(since "$t0")
  # A binary that fills its reload cache after it is ready (`documents kept for reloads`):
  # wait for that, so that the memory and the reloads are those of the proxy from then on.
  cache_s="-"
  if grep -q "documents kept for reloads" "$BIN" 2>/dev/null; then
    until grep -q "documents kept for reloads" "$RUN/proxy.log"; do
      [ $SECONDS -lt $deadline ] || { echo "no reload cache within ${WAIT:-120} s" >&2; exit 1; }
      sleep 0.05
    done
    cache_s=$(since "$t0")
  fi
  sleep 2
  rss=$(kib $pid VmRSS)
  hwm=$(kib $pid VmHWM)
  [ -n "$base_kib" ] || base_kib=$rss
  per_ep="-"
  if [ "$svc" -gt 1 ]; then per_ep=$(( (rss - base_kib) * 1024 / (10 * (svc - 1)) )); fi
  times=()
  for r in $(seq "$RELOADS"); do times+=("$(reload "$r" $pid "$svc")"); done
  reload_med=$(printf '%s\n' "${times[@]}" | median)
  sleep 1
  cleanup_med=$(grep -o 'cleanup_ms=[0-9.]*' "$RUN/proxy.log" | cut -d= -f2 | median)
  [ -n "$cleanup_med" ] && cleanup_med=$(awk -v ms="$cleanup_med" 'BEGIN { printf "%.3f", ms / 1000 }') || cleanup_med="-"
  printf '%-8s %-9s %8s %8.1f %8.1f %9s %8s %9.1f %9s %8s\n' "$svc" $((svc * 10)) "$ready" \
    "$(echo "$rss / 1024" | bc -l)" "$(echo "$hwm / 1024" | bc -l)" "$per_ep" "$reload_med" \
    "$(echo "$(kib $pid VmRSS) / 1024" | bc -l)" "$cleanup_med" "$cache_s"
  if [ "$LATENCY" = 1 ] && [ "$svc" = "$(echo "$SERVICES" | tr ' ' '\n' | tail -1)" ]; then
    n=$RELOADS
    for host in svc-0.bench "svc-$((svc - 1)).bench"; do
      [ "$host" != "svc-0.bench" ] && [ "$svc" -le 1 ] && continue
      quiet=$("${PY[@]}" load --port $LISTEN --host "$host" --rps "$RPS" --seconds "$SECONDS_LOAD")
      "${PY[@]}" load --port $LISTEN --host "$host" --rps "$RPS" --seconds "$SECONDS_LOAD" >"$RUN/busy.json" &
      loadpid=$!
      for _ in $(seq $(( ${SECONDS_LOAD%.*} / 2 ))); do
        sleep 1
        n=$((n + 1))
        reload $n $pid "$svc" >/dev/null
        sleep 1
      done
      wait $loadpid
      # The control: the same load while two processes that are not the proxy spin for
      # BURN_S s every 2 s, about the CPU a reload takes (1.2 s at 10,000 x 10): what the
      # machine's two cores do to the tail by themselves.
      "${PY[@]}" load --port $LISTEN --host "$host" --rps "$RPS" --seconds "$SECONDS_LOAD" >"$RUN/burn.json" &
      loadpid=$!
      for _ in $(seq $(( ${SECONDS_LOAD%.*} / 2 ))); do
        sleep 1
        "${PY[@]}" burn --threads 2 --seconds "${BURN_S:-0.6}"
        sleep 1
      done
      wait $loadpid
      echo "latency $host, no reload:        $quiet"
      echo "latency $host, reload every 2 s: $(cat "$RUN/busy.json")"
      echo "latency $host, CPU burn every 2 s (control, no reload): $(cat "$RUN/burn.json")"
    done
  fi
  kill $pid
  wait $pid 2>/dev/null || true
done
echo "machine: $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), $(uname -sr); binary: $BIN"
