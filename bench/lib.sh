# Sourced by the quick benchmark scripts (cpu-ab.sh, callgrind.sh) after they set HERE: a
# scratch directory in $RUN, every process in $PIDS stopped on exit, and the shared harness's
# nginx upstream (`return 200 "ok"` on 127.0.0.1:18080).
PEERS=${PEERS:-$HERE/../../shared/bench}
RUN=$(mktemp -d /tmp/tripline-bench.XXXXXX)
mkdir -p "$RUN/tmp"
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$RUN"
}
trap cleanup EXIT

# start_upstream [CPU]: starts the nginx upstream, pinned to CPU if one is given.
start_upstream() {
  local pin=()
  if [ -n "${1:-}" ]; then pin=(taskset -c "$1"); fi
  "${pin[@]}" nginx -p "$RUN/" -c "$PEERS/conf/upstream-nginx.conf" -e "$RUN/up.err" -g "pid $RUN/up.pid;" &
  PIDS+=($!)
}
