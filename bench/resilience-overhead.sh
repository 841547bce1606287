#!/usr/bin/env bash
# CPU cost of the resilience engine, measured in one run: two tripline processes in front of
# the same nginx upstream, one with the engine off (bench/overhead-off.yaml: no outlier
# detection, no breaker, retries disabled), one with everything on (bench/overhead-on.yaml:
# every outlier detector, a destination breaker, per-endpoint breakers, retries). Cases are
# interleaved so drift hits both alike; the figure is the proxy's own CPU time per request.
#
#   bash bench/resilience-overhead.sh                 # REPEATS=3 DURATION=10
#   TRIPLINE=target/release/tripline REPEATS=5 bash bench/resilience-overhead.sh
#
# Needs nginx, wrk and h2load (../shared/bench/setup-peers.sh installs them). Loopback only.
# Proxies run on CPU 0; load generator and upstream on CPU 1.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
SHARED=${SHARED:-$ROOT/../shared}
TRIPLINE=${TRIPLINE:-$ROOT/target/release/tripline}
REPEATS=${REPEATS:-3}
DURATION=${DURATION:-10}
RUN=$(mktemp -d /tmp/tripline-overhead.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; rm -rf "$RUN"; }
trap cleanup EXIT

[ -x "$TRIPLINE" ] || { echo "build first: cargo build --release ($TRIPLINE missing)" >&2; exit 1; }
mkdir -p "$RUN/tmp"
taskset -c 1 nginx -p "$RUN/" -c "$SHARED/bench/conf/upstream-nginx.conf" -e "$RUN/up.err" -g "pid $RUN/up.pid;" &
PIDS+=($!)
taskset -c 0 "$TRIPLINE" run -c "$HERE/overhead-off.yaml" --workers 1 --admin 127.0.0.1:15991 --log-level error &
OFF=$!; PIDS+=($OFF)
taskset -c 0 "$TRIPLINE" run -c "$HERE/overhead-on.yaml" --workers 1 --admin 127.0.0.1:15992 --log-level error &
ON=$!; PIDS+=($ON)
for port in 18080 18140 18141; do
  for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done
done

ticks() { awk '{sub(/^.*\) /,""); print $12+$13}' "/proc/$1/stat"; }
served() { curl -s "http://127.0.0.1:$1/metrics" | awk '/^tripline_requests_total/{s+=$2} END{print s+0}'; }
TCK=$(getconf CLK_TCK)

measure() { # measure NAME PID PORT ADMIN TOOL -> prints "NAME TOOL us/req rps"
  local name=$1 pid=$2 port=$3 admin=$4 tool=$5 t0 t1 r0 r1
  t0=$(ticks "$pid"); r0=$(served "$admin")
  if [ "$tool" = h1 ]; then
    taskset -c 1 wrk -t1 -c64 -d"${DURATION}s" "http://127.0.0.1:$port/" >/dev/null 2>&1
  else
    taskset -c 1 h2load -t1 -c8 -m8 -D"$DURATION" "http://127.0.0.1:$port/" >/dev/null 2>&1
  fi
  t1=$(ticks "$pid"); r1=$(served "$admin")
  awk -v n="$name" -v tool="$tool" -v dt=$((t1 - t0)) -v dr=$((r1 - r0)) -v tck="$TCK" -v d="$DURATION" \
    'BEGIN{printf "%s %s %.2f %.0f\n", n, tool, dt / tck * 1e6 / dr, dr / d}'
}

echo "# engine tool cpu_us_per_request rps" | tee "$RUN/results"
for r in $(seq "$REPEATS"); do
  for tool in h1 h2c; do
    measure off "$OFF" 18140 15991 "$tool" | tee -a "$RUN/results"
    measure on "$ON" 18141 15992 "$tool" | tee -a "$RUN/results"
  done
done
echo "# medians"
for tool in h1 h2c; do
  off=$(awk -v t="$tool" '$1=="off" && $2==t {print $3}' "$RUN/results" | sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}')
  on=$(awk -v t="$tool" '$1=="on" && $2==t {print $3}' "$RUN/results" | sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}')
  awk -v t="$tool" -v a="$off" -v b="$on" 'BEGIN{printf "%s: off %.2f us/req, on %.2f us/req, overhead %+.1f%%\n", t, a, b, (b / a - 1) * 100}'
done
