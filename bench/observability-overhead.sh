#!/usr/bin/env bash
# CPU per request of observability, measured in one run (issue 21's figure): tripline
# processes in front of the same nginx upstream, interleaved so drift hits all alike:
#   plain    metrics only (always on: counters resolved when a cluster is built)
#   log      + the access log at 100% to a file (JSON)
#   trace    + traces sampled at 1%, exported with OTLP/HTTP to a receiver on loopback
#   all      + --istio-metrics, the access log and traces at 1% together
# The figure is each process's own CPU time (user + kernel, all its threads: the access log's
# writer and the span exporter's included) per request served, against plain's in the same
# round: the machine's speed drifts by 10% from minute to minute (a shared VM), so rounds are
# short, their order rotates, and the summary is the median of the per-round ratios.
#
#   bash bench/observability-overhead.sh                       # REPEATS=8 DURATION=4
#   TRIPLINE=target/release/tripline REPEATS=12 bash bench/observability-overhead.sh
#
# Needs nginx and h2load (../shared/bench/setup-peers.sh installs them) and python3 (the
# OTLP receiver: it answers every export with 200). Loopback only. The proxies run on CPU 0;
# load generator, upstream and receiver on CPU 1.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
TRIPLINE=${TRIPLINE:-$HERE/../target/release/tripline}
REPEATS=${REPEATS:-8}
DURATION=${DURATION:-4}
[ -x "$TRIPLINE" ] || { echo "build first: cargo build --release ($TRIPLINE missing)" >&2; exit 1; }
# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"

start_upstream 1
cat >"$RUN/receiver.py" <<'PY'
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200); self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0"); self.end_headers()
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
taskset -c 1 python3 "$RUN/receiver.py" 14318 &
PIDS+=($!)

declare -A PID PORT ADMIN
CASES=(plain log trace all)
i=0
for c in "${CASES[@]}"; do
  i=$((i + 1)); port=$((18150 + i)); admin=$((15980 + i))
  sed "s/18130/$port/" "$HERE/peers.yaml" >"$RUN/$c.yaml"
  extra=()
  case $c in
    log) extra=(--access-log "$RUN/$c.log") ;;
    trace) extra=(--otlp-endpoint http://127.0.0.1:14318 --trace-sample 0.01) ;;
    all) extra=(--istio-metrics --access-log "$RUN/$c.log" --otlp-endpoint http://127.0.0.1:14318 --trace-sample 0.01) ;;
  esac
  taskset -c 0 "$TRIPLINE" run -c "$RUN/$c.yaml" --workers 1 --admin "127.0.0.1:$admin" --log-level error \
    "${extra[@]}" >"$RUN/$c.out" 2>&1 &
  PID[$c]=$!; PORT[$c]=$port; ADMIN[$c]=$admin; PIDS+=($!)
done
for port in 18080 "${PORT[@]}"; do
  for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done
done

ticks() { awk '{sub(/^.*\) /,""); print $12+$13}' "/proc/$1/stat"; }
served() { curl -s "http://127.0.0.1:$1/metrics" | awk '/^tripline_requests_total/{s+=$2} END{print s+0}'; }
TCK=$(getconf CLK_TCK)

measure() { # measure CASE TOOL -> prints "CASE TOOL us/req rps"
  local c=$1 tool=$2 t0 t1 r0 r1
  # The access log starts empty each time: the disk's state is not part of the figure.
  [ -f "$RUN/$c.log" ] && : >"$RUN/$c.log"
  t0=$(ticks "${PID[$c]}"); r0=$(served "${ADMIN[$c]}")
  if [ "$tool" = h1 ]; then
    taskset -c 1 h2load --h1 -t1 -c64 -D"$DURATION" "http://127.0.0.1:${PORT[$c]}/" >/dev/null 2>&1
  else
    taskset -c 1 h2load -t1 -c8 -m8 -D"$DURATION" "http://127.0.0.1:${PORT[$c]}/" >/dev/null 2>&1
  fi
  t1=$(ticks "${PID[$c]}"); r1=$(served "${ADMIN[$c]}")
  awk -v n="$c" -v tool="$tool" -v dt=$((t1 - t0)) -v dr=$((r1 - r0)) -v tck="$TCK" -v d="$DURATION" \
    'BEGIN{printf "%s %s %.2f %.0f\n", n, tool, dt / tck * 1e6 / dr, dr / d}'
}

echo "# round case tool cpu_us_per_request rps" | tee "$RUN/results"
for r in $(seq "$REPEATS"); do
  # The order rotates each round: no case is always measured first or last.
  order=("${CASES[@]:$((r % 4))}" "${CASES[@]:0:$((r % 4))}")
  for tool in h1 h2c; do
    for c in "${order[@]}"; do
      echo "$r $(measure "$c" "$tool")" | tee -a "$RUN/results"
    done
  done
done
echo "# median CPU per request, and the median of each round's ratio to plain"
python3 - "$RUN/results" <<'PY'
import statistics, sys
us = {}
for line in open(sys.argv[1]):
    if not line.startswith("#"):
        r, case, tool, cpu, _ = line.split()
        us[(r, case, tool)] = float(cpu)
rounds = sorted({r for r, _, _ in us})
for tool in ("h1", "h2c"):
    for case in ("plain", "log", "trace", "all"):
        cpu = statistics.median(us[(r, case, tool)] for r in rounds)
        ratios = sorted(us[(r, case, tool)] / us[(r, "plain", tool)] - 1 for r in rounds)
        q1, q3 = ratios[len(ratios) // 4], ratios[(3 * len(ratios)) // 4]
        print(f"{case:6} {tool:4} {cpu:6.2f} us/request  {statistics.median(ratios) * 100:+5.1f}% "
              f"(quartiles {q1 * 100:+.1f}% .. {q3 * 100:+.1f}%)")
PY
# Spans the receiver got would show in its own process; the proxies' exporter errors, if any:
grep -h -i "error\|warn" "$RUN/trace.out" "$RUN/all.out" | head -5 || true
