#!/usr/bin/env bash
# Quick same-run A/B of CPU per request: HAProxy against one or more tripline binaries, with
# the user/kernel split. Minutes instead of run-peers.sh's quarter hour; use it while working,
# and run-peers.sh for the figures in docs/benchmarks.md.
#
#   BINS="/tmp/old-tripline target/release/tripline" ROUNDS=3 DUR=5 bash bench/cpu-ab.sh
#   MODES="lat-h1 lat-h2" bash bench/cpu-ab.sh     # latency at a fixed 5,000 rps (oha) instead
#   WORKERS=2 BINS=... bash bench/cpu-ab.sh          # the binaries with two workers (all on CPU 0)
#
# Needs the peers from ../shared/bench/setup-peers.sh (nginx, haproxy, wrk, h2load). The
# upstream is the harness's nginx (`return 200 "ok"`) on 127.0.0.1:18080; proxies run one
# worker on CPU 0, the load generator and upstream on CPU 1. Prints one line per case, mode
# and round: requests per second, CPU µs per request, and its user and kernel parts, and the
# context switches per request of the upstream and of the load generator: how often the
# proxy's sends found them asleep (each such wakeup costs the proxy kernel time).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
BINS=${BINS:-$HERE/../target/release/tripline}
DUR=${DUR:-5}
ROUNDS=${ROUNDS:-3}
MODES=${MODES:-"h1 h2"}
# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"

start_upstream 1
taskset -c 0 haproxy -db -f "$PEERS/conf/proxy-haproxy.cfg" >"$RUN/haproxy.log" 2>&1 &
PIDS+=($!)
declare -A SUT H1 H2
SUT[haproxy]=$!; H1[haproxy]=http://127.0.0.1:18090/; H2[haproxy]=http://127.0.0.1:18091/
CASES=(haproxy)
i=0
for bin in $BINS; do
  i=$((i + 1)); port=$((18130 + i)); name="tripline$i"
  sed "s/18130/$port/" "$HERE/peers.yaml" >"$RUN/$name.yaml"
  taskset -c 0 "$bin" run -c "$RUN/$name.yaml" --workers "${WORKERS:-1}" --log-level error --admin "127.0.0.1:$((15100 + i))" \
    >"$RUN/$name.log" 2>&1 &
  PIDS+=($!)
  SUT[$name]=$!; H1[$name]=http://127.0.0.1:$port/; H2[$name]=http://127.0.0.1:$port/
  CASES+=("$name")
  echo "$name = $bin"
done
for c in "${CASES[@]}"; do
  for _ in $(seq 50); do curl -sf -o /dev/null "${H1[$c]}" && break; sleep 0.1; done
done

ticks() { awk '{sub(/^.*\) /,""); print $12, $13}' "/proc/$1/stat"; }
# Context switches (voluntary and not) of the upstream's processes, summed.
switches() {
  local p t=0
  for p in $(pgrep -f "nginx: .*process" -P "$(cat "$RUN/up.pid")") "$(cat "$RUN/up.pid")"; do
    t=$((t + $(awk '/ctxt_switches/{s += $2} END{print s}' "/proc/$p/status")))
  done
  echo "$t"
}
# Runs the load generator with GNU time, which writes its context switches to $RUN/gen.csw.
gen() { /usr/bin/time -f "%w %c" -o "$RUN/gen.csw" taskset -c 1 "$@"; }
for r in $(seq "$ROUNDS"); do
  for c in "${CASES[@]}"; do
    for mode in $MODES; do
      read -r u0 s0 < <(ticks "${SUT[$c]}")
      w0=$(switches)
      case $mode in
        h1) n=$(gen wrk -t1 -c64 -d"${DUR}s" "${H1[$c]}" | awk '/requests in/{print $1}') ;;
        h2) n=$(gen h2load -t1 -c8 -m8 -D"$DUR" "${H2[$c]}" 2>/dev/null | awk '/^requests:/{print $8}') ;;
        lat-h1 | lat-h2)
          # The harness's fixed-rate latency run: oha at 5,000 rps, latency-corrected.
          if [ "$mode" = lat-h1 ]; then args=(-c 16 "${H1[$c]}"); else args=(-c 2 -p 8 --http2 "${H2[$c]}"); fi
          taskset -c 1 oha --no-tui --output-format json -z "${DUR}s" -q 5000 --latency-correction "${args[@]}" \
            >"$RUN/oha.json" 2>/dev/null
          read -r u1 s1 < <(ticks "${SUT[$c]}")
          # The proxy's CPU per request at this rate: at low load nothing is batched, and every
          # request pays for waking the proxy and for a cold cache.
          python3 -c "import json,sys; j=json.load(open(sys.argv[1])); p=j['latencyPercentiles']
n=sum(j['statusCodeDistribution'].values())
hz=int(sys.argv[5]); u=int(sys.argv[6])*1e6/hz/n; s=int(sys.argv[7])*1e6/hz/n
print('%-10s %s round %s: p50 %.0f  p90 %.0f  p99 %.0f  p99.9 %.0f us  cpu %.1f us/req (user %.1f, kernel %.1f)' % (sys.argv[2], sys.argv[3], sys.argv[4],
      p['p50']*1e6, p['p90']*1e6, p['p99']*1e6, p['p99.9']*1e6, u+s, u, s))" "$RUN/oha.json" "$c" "$mode" "$r" \
            "$(getconf CLK_TCK)" $((u1 - u0)) $((s1 - s0))
          continue ;;
      esac
      read -r u1 s1 < <(ticks "${SUT[$c]}")
      w1=$(switches)
      read -r gv gi <"$RUN/gen.csw"
      awk -v c="$c" -v m="$mode" -v r="$r" -v n="$n" -v d="$DUR" -v u=$((u1 - u0)) -v s=$((s1 - s0)) \
        -v up=$((w1 - w0)) -v lg=$((gv + gi)) -v hz="$(getconf CLK_TCK)" \
        'BEGIN{ printf "%-10s %s round %d: %6.0f rps  %6.2f us/req  (user %.2f, kernel %.2f)  switches/req: upstream %.3f, loadgen %.3f\n",
          c, m, r, n / d, (u + s) * 1e6 / hz / n, u * 1e6 / hz / n, s * 1e6 / hz / n, up / n, lg / n }'
    done
  done
done
