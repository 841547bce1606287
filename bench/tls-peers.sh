#!/usr/bin/env bash
# TLS termination against the peers: Tripline, HAProxy, nginx and Envoy each terminating TLS in
# front of the same plaintext upstream, with the same certificate, one worker pinned to CPU 0,
# the load on CPU 1. Measures CPU per request over keep-alive TLS and handshakes per second.
#
#   ROUNDS=3 DUR=5 bash bench/tls-peers.sh                       # target/release/tripline
#   bash bench/tls-peers.sh /tmp/other-tripline                  # or BIN=/tmp/other-tripline
#   TRIPLINE_CMD='/tmp/t run -c "$TLS_YAML" --workers 1 --log-level error' bash bench/tls-peers.sh
#   CASES="haproxy tripline" MODES="h1 h2" bash bench/tls-peers.sh
#
# Cases (CASES, default all four; each on its own port, HTTP/1.1 and h2 by ALPN):
#   haproxy  127.0.0.1:18290  bench/tls/haproxy.cfg, nbthread 1
#   nginx    127.0.0.1:18300  bench/tls/nginx.conf, worker_processes 1
#   envoy    127.0.0.1:18310  bench/tls/envoy.yaml, --concurrency 1 (ENVOY_BIN, default
#                             /opt/peers-venv/bin/envoy from ../shared/bench/setup-peers.sh)
#   tripline 127.0.0.1:18330  bench/peers-tls.yaml, --workers 1 (BIN, or TRIPLINE_CMD: a shell
#                             command that runs it in the foreground; $TLS_YAML is the config)
# Modes (MODES, default all; each round runs every case in every mode, interleaved):
#   h1     wrk -t1 -c64 -d$DUR over https (no ALPN: HTTP/1.1): rps and the proxy's CPU µs/request
#   h2     h2load -t1 -c8 -m8 -D$DUR (ALPN h2): rps and CPU µs/request
#   new    openssl s_time -new -tls1_3 -www / : full handshakes per second, each connection a
#          full handshake and one HTTP/1.0 request; HS_PAR (default 4) s_time processes at
#          once, for one alone waits out each handshake. CPU µs per connection
#   reuse  openssl s_time -reuse -tls1_3 -www / : the same with the session resumed (a TLS 1.3
#          ticket; s_time only gets the ticket if it reads, hence -www), and how many resumed
#   hs     openssl s_time -new -tls1_3 without -www: the handshake alone, no request
#   gnew, greuse, ghs: the same three with bench/tls/hsload.go (Go's crypto/tls, HS_CONC
#          connections at once, default 16; built at start with `go build`), whose handshakes
#          cost the client about half of OpenSSL 3.0's, so the proxy, not the client, is more
#          often the limit; `GET / HTTP/1.1` with `Connection: close` for the request
# Each line also says how busy the proxy and the load generator were (cores): a load generator
# near 1.00 with the proxy below it means the figure is the client's limit, not the proxy's.
# A measurement during which other work on the machine used more than FOREIGN_MAX cores (0.15)
# is made again after RETRY_WAIT seconds (45), up to RETRIES (3) times; the last one is kept
# whatever it saw, and marked * in the medians.
# The CPU figures are the proxy's own utime+stime (all its threads and child processes, from
# /proc) over the run divided by the requests or connections; "foreign" is the CPU the rest of
# the machine used meanwhile (not the proxy, the upstream or the load generator), in cores.
#
# The certificate (ECDSA P-256, SAN DNS:localhost and IP:127.0.0.1) is made once per run in the
# run's temp dir. The load generators get OPENSSL_CONF=bench/tls/client-openssl.cnf (TLS 1.3
# only, AES-128-GCM then AES-256-GCM then ChaCha20, X25519 first), the proxies do not; at
# start the script prints what each proxy negotiates with it and with OpenSSL's default client.
# Needs nginx, haproxy, wrk, h2load, openssl, curl, go (for the g* modes) and Envoy. Prints one line per case, mode
# and round, then medians; raw output in $OUT_DIR (default /tmp/tls-peers-results/<time>).
# Every process it starts is stopped on exit by its PID.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
BIN=${BIN:-${1:-$HERE/../target/release/tripline}}
DUR=${DUR:-5}
ROUNDS=${ROUNDS:-3}
CASES=${CASES:-"haproxy nginx envoy tripline"}
MODES=${MODES:-"h1 h2 new reuse hs gnew greuse ghs"}
HS_PAR=${HS_PAR:-4}
HS_CONC=${HS_CONC:-16}
FOREIGN_MAX=${FOREIGN_MAX:-0.15}
RETRIES=${RETRIES:-3}
RETRY_WAIT=${RETRY_WAIT:-45}
ENVOY_BIN=${ENVOY_BIN:-/opt/peers-venv/bin/envoy}
OUT=${OUT_DIR:-/tmp/tls-peers-results/$(date +%Y%m%dT%H%M%S)}
CLIENT_CONF=$HERE/tls/client-openssl.cnf
# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"
mkdir -p "$OUT"
CLK_TCK=$(getconf CLK_TCK)
log() { echo "$*" | tee -a "$OUT/run.log"; }

# ---------------------------------------------------------------- certificate and configs
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -keyout "$RUN/key.pem" -out "$RUN/cert.pem" -subj "/CN=localhost" \
  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" 2>/dev/null
cat "$RUN/cert.pem" "$RUN/key.pem" >"$RUN/haproxy.pem"
fill() { # fill TEMPLATE OUTPUT PORT
  sed -e "s|@PORT@|$3|g" -e "s|@CERT@|$RUN/cert.pem|g" -e "s|@KEY@|$RUN/key.pem|g" \
    -e "s|@PEM@|$RUN/haproxy.pem|g" -e "s|@ADMIN@|19911|g" "$1" >"$2"
}
if grep -qw -e gnew -e greuse -e ghs <<<"$MODES"; then
  (cd "$RUN" && go build -o "$RUN/hsload" "$HERE/tls/hsload.go")
fi
export TLS_YAML=$RUN/peers-tls.yaml
cp "$HERE/peers-tls.yaml" "$TLS_YAML"   # beside cert.pem and key.pem: its paths are relative
TRIPLINE_CMD=${TRIPLINE_CMD:-"$BIN run -c $TLS_YAML --workers 1 --log-level error --admin 127.0.0.1:15131"}

{
  echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  echo "machine: $(nproc) cpus, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), kernel $(uname -r)"
  echo "tripline: $TRIPLINE_CMD"
  [ -f "$BIN" ] && echo "tripline binary: $BIN, built $(date -u -r "$BIN" '+%Y-%m-%d %H:%M UTC'); $(git -C "$HERE" rev-parse --short HEAD 2>/dev/null || echo '?') checked out now"
  echo "haproxy: $(haproxy -v 2>&1 | head -1)"
  echo "haproxy ssl: $(haproxy -vv 2>&1 | grep -E 'Running on OpenSSL' | sed 's/^ *//')"
  echo "nginx: $(nginx -v 2>&1)"
  [ -x "$ENVOY_BIN" ] && echo "envoy: $("$ENVOY_BIN" --version 2>&1 | grep -o 'version: .*')"
  echo "openssl: $(openssl version)"
  echo "wrk: $(wrk -v 2>&1 | head -1 | cut -c1-40)"
  echo "h2load: $(h2load --version 2>&1)"
  echo "go: $(go version 2>&1 || echo missing)"
  echo "settings: ROUNDS=$ROUNDS DUR=$DUR HS_PAR=$HS_PAR HS_CONC=$HS_CONC FOREIGN_MAX=$FOREIGN_MAX RETRIES=$RETRIES RETRY_WAIT=$RETRY_WAIT CASES=\"$CASES\" MODES=\"$MODES\""
} | tee "$OUT/versions.txt"

# ---------------------------------------------------------------- servers
start_upstream 1
declare -A SUT PORT
STARTED=""
start() { # start NAME CMD... : on CPU 0 (taskset execs: $! is the server's PID)
  local name=$1; shift
  taskset -c 0 "$@" >"$RUN/$name.log" 2>&1 &
  STARTED=$!
  PIDS+=("$STARTED")
}
for c in $CASES; do
  case $c in
    haproxy)
      fill "$HERE/tls/haproxy.cfg" "$RUN/haproxy.cfg" 18290
      start haproxy haproxy -db -f "$RUN/haproxy.cfg"
      PORT[$c]=18290 ;;
    nginx)
      fill "$HERE/tls/nginx.conf" "$RUN/nginx.conf" 18300
      start nginx nginx -p "$RUN/" -c "$RUN/nginx.conf" -e "$RUN/nginx.err" -g "pid $RUN/nginx.pid;"
      PORT[$c]=18300 ;;
    envoy)
      if [ ! -x "$ENVOY_BIN" ]; then log "skip envoy: $ENVOY_BIN missing (../shared/bench/setup-peers.sh)"; continue; fi
      fill "$HERE/tls/envoy.yaml" "$RUN/envoy.yaml" 18310
      start envoy "$ENVOY_BIN" -c "$RUN/envoy.yaml" --concurrency 1 -l error --disable-hot-restart
      PORT[$c]=18310 ;;
    tripline)
      start tripline bash -c "exec $TRIPLINE_CMD"
      PORT[$c]=18330 ;;
    *) log "unknown case $c"; continue ;;
  esac
  SUT[$c]=$STARTED
done
for _ in $(seq 100); do curl -s -o /dev/null http://127.0.0.1:18080/ && break; sleep 0.1; done

client() { OPENSSL_CONF=$CLIENT_CONF timeout $((DUR + 30)) taskset -c 1 "$@"; }
# gen CMD...: a load generator on CPU 1 (with its children), its CPU time in $RUN/gen.time.
gen() { client /usr/bin/time -f "%U %S" -o "$RUN/gen.time" "$@"; }
READY=()
for c in $CASES; do
  [ -n "${SUT[$c]:-}" ] || continue
  ok=""
  for _ in $(seq 100); do
    if [ "$(OPENSSL_CONF=$CLIENT_CONF curl -sk -o /dev/null -w '%{http_code}' "https://127.0.0.1:${PORT[$c]}/")" = 200 ]; then ok=1; break; fi
    kill -0 "${SUT[$c]}" 2>/dev/null || break
    sleep 0.1
  done
  if [ -z "$ok" ]; then log "$c did not start: $(tail -5 "$RUN/$c.log" | tr '\n' ' ')"; continue; fi
  h2=$(OPENSSL_CONF=$CLIENT_CONF curl -sk --http2 -o /dev/null -w '%{http_version} %{http_code}' "https://127.0.0.1:${PORT[$c]}/" || true)
  READY+=("$c")
  # What it negotiates, with the load generators' OpenSSL config and with OpenSSL's default.
  for conf in bench default; do
    if [ $conf = bench ]; then export OPENSSL_CONF=$CLIENT_CONF; fi
    neg=$(openssl s_client -connect "127.0.0.1:${PORT[$c]}" -alpn h2,http/1.1 </dev/null 2>/dev/null |
      sed 's/^ *//' | grep -aE '^(New,|Server Temp Key|ALPN protocol)' | sort -u | paste -sd';' | sed 's/;/; /g' || true)
    unset OPENSSL_CONF
    log "negotiated $(printf '%-8s' "$c") ($conf client): $neg"
  done
  log "curl --http2 $c: HTTP/$h2"
done
log "ready: ${READY[*]}"

# ---------------------------------------------------------------- measurement
tree_pids() { echo "$1"; ps -o pid= --ppid "$1" 2>/dev/null | tr -d ' ' || true; }
ticks() { # user and kernel ticks of a process (all threads) and its children
  local p u=0 s=0 a b
  for p in $(tree_pids "$1"); do
    read -r a b < <(awk '{sub(/^.*\) /,""); print $12, $13}' "/proc/$p/stat" 2>/dev/null || echo 0 0)
    u=$((u + a)); s=$((s + b))
  done
  echo "$u $s"
}
up_ticks() { local u s; read -r u s < <(ticks "$(cat "$RUN/up.pid")"); echo $((u + s)); }
machine_ticks() { awk '/^cpu /{print $2+$3+$4+$7+$8}' /proc/stat; }

RES=$OUT/results.tsv
: >"$RES"
wall() { date +%s.%N; }
# stime ARGS...: $HS_PAR openssl s_time processes at once (one alone is latency-bound: it waits
# for each handshake), their outputs in $raw.1 ... and, concatenated, in $raw.
stime() {
  local i
  for i in $(seq "$HS_PAR"); do openssl s_time "$@" -time "$DUR" >"$raw.$i" 2>&1 & done
  wait
}
export -f stime
measure() { # measure CASE MODE ROUND
  local c=$1 mode=$2 r=$3 port=${PORT[$1]} u0 s0 u1 s1 m0 m1 w0 w1 t0 t1 n rate extra="" lg
  local url=https://127.0.0.1:$port/ hp=127.0.0.1:${PORT[$1]}
  raw="$OUT/$1.$2.$3.txt"; export raw DUR HS_PAR
  read -r u0 s0 < <(ticks "${SUT[$c]}"); w0=$(up_ticks); m0=$(machine_ticks); t0=$(wall)
  case $mode in
    h1) gen wrk -t1 -c64 -d"${DUR}s" "$url" >"$raw" 2>&1 || true ;;
    h2) gen h2load -t1 -c8 -m8 -D"$DUR" "$url" >"$raw" 2>&1 || true ;;
    new) gen bash -c 'stime -connect "$0" -new -tls1_3 -www /' "$hp" || true ;;
    reuse) gen bash -c 'stime -connect "$0" -reuse -tls1_3 -www /' "$hp" || true ;;
    hs) gen bash -c 'stime -connect "$0" -new -tls1_3' "$hp" || true ;;
    gnew) gen "$RUN/hsload" -addr "$hp" -c "$HS_CONC" -d "${DUR}s" -req >"$raw" 2>&1 || true ;;
    greuse) gen "$RUN/hsload" -addr "$hp" -c "$HS_CONC" -d "${DUR}s" -req -resume >"$raw" 2>&1 || true ;;
    ghs) gen "$RUN/hsload" -addr "$hp" -c "$HS_CONC" -d "${DUR}s" >"$raw" 2>&1 || true ;;
  esac
  t1=$(wall); read -r u1 s1 < <(ticks "${SUT[$c]}"); w1=$(up_ticks); m1=$(machine_ticks)
  lg=$(awk -v k="$CLK_TCK" '{printf "%d", ($1 + $2) * k}' "$RUN/gen.time" 2>/dev/null || echo 0)
  case $mode in
    h1)
      n=$(awk '/requests in/{print $1}' "$raw"); rate=$(awk '/^Requests\/sec/{print $2}' "$raw")
      extra=$(awk '/Non-2xx|Socket errors/{printf "%s ", $0}' "$raw") ;;
    h2)
      n=$(awk '/^requests:/{print $8}' "$raw"); rate=$(awk '/^finished in/{print $4}' "$raw")
      extra=$(awk '/^status codes:/{s = $3 " 2xx"} /^TLS Protocol|^Cipher|^Server Temp Key|^Application protocol/{t = t "; " $0} END{print s t}' "$raw") ;;
    new | reuse | hs)
      cat "$raw".* >"$raw"; rm -f "$raw".*
      # Each process: "N connections in T real seconds" (T whole seconds: the rate is over the
      # wall clock measured here); then one character per connection, r when resumed.
      n=$(awk '/connections in .* real seconds/{n += $1} END{print n + 0}' "$raw")
      rate=$(awk -v n="$n" -v t="$(awk -v a="$t0" -v b="$t1" 'BEGIN{print b - a}')" 'BEGIN{printf "%.1f", n / t}')
      extra="$(awk '/connections in .* real seconds/{printf "%s B/conn ", $7; exit}' "$raw")"
      if [ "$mode" = reuse ]; then
        extra="$extra resumed $(grep -A1 '^starting' "$raw" | grep -v '^starting' | tr -cd r | wc -c || true) of $n"
      fi ;;
    gnew | greuse | ghs)
      n=$(awk '/^connections/{print $2}' "$raw"); rate=$(awk '/^connections/{print $10}' "$raw")
      extra=$(awk '/^connections/{printf "resumed %s errors %s", $4, $6} /^first error/{printf "; %s", $0}' "$raw") ;;
  esac
  n=${n:-0}; rate=${rate:-0}
  local fc; fc=$(awk -v f=$(((m1 - m0) - (u1 - u0) - (s1 - s0) - (w1 - w0) - lg)) -v hz="$CLK_TCK" -v a="$t0" -v b="$t1" \
    'BEGIN{printf "%.2f", f / hz / (b - a)}')
  if [ "${4:-}" = retry ] && awk -v f="$fc" -v m="$FOREIGN_MAX" 'BEGIN{exit !(f > m)}'; then
    log "$(printf '%-9s %-5s round %d: other work used %s cores meanwhile: measuring again in %d s' "$c" "$mode" "$r" "$fc" "$RETRY_WAIT")"
    sleep "$RETRY_WAIT"
    return 1
  fi
  if [ "$n" -gt 0 ] 2>/dev/null; then
    awk -v c="$c" -v m="$mode" -v r="$r" -v n="$n" -v rate="$rate" -v u=$((u1 - u0)) -v s=$((s1 - s0)) \
      -v f=$(((m1 - m0) - (u1 - u0) - (s1 - s0) - (w1 - w0) - lg)) -v lg="$lg" -v hz="$CLK_TCK" \
      -v d="$(awk -v a="$t0" -v b="$t1" 'BEGIN{print b - a}')" -v x="$extra" -v fc="$fc" \
      'BEGIN{ unit = (m == "h1" || m == "h2") ? "req" : "conn";
        printf "%-9s %-5s round %d: %8.1f %s/s  %7.2f us/%s  (user %.2f, kernel %.2f)  n %d  busy: proxy %.2f, loadgen %.2f, foreign %.2f cores  %s\n",
          c, m, r, rate, unit, (u + s) * 1e6 / hz / n, unit, u * 1e6 / hz / n, s * 1e6 / hz / n, n,
          (u + s) / hz / d, lg / hz / d, f / hz / d, x
        printf "%s\t%s\t%d\t%s\t%.3f\t%s\n", c, m, r, rate, (u + s) * 1e6 / hz / n, fc >> "'"$RES"'" }' | tee -a "$OUT/run.log"
  else
    log "$(printf '%-9s %-5s round %d: FAILED (%s)' "$c" "$mode" "$r" "$(tail -3 "$raw" | tr '\n' ' ')")"
  fi
}

# A short warm-up of every proxy (both protocols), not measured.
for c in "${READY[@]}"; do
  OPENSSL_CONF=$CLIENT_CONF timeout 20 taskset -c 1 wrk -t1 -c64 -d1s "https://127.0.0.1:${PORT[$c]}/" >/dev/null 2>&1 || true
  OPENSSL_CONF=$CLIENT_CONF timeout 20 taskset -c 1 h2load -t1 -c8 -m8 -D1 "https://127.0.0.1:${PORT[$c]}/" >/dev/null 2>&1 || true
done
for r in $(seq "$ROUNDS"); do
  for mode in $MODES; do
    for c in "${READY[@]}"; do
      for _ in $(seq "$RETRIES"); do measure "$c" "$mode" "$r" retry && continue 2; done
      measure "$c" "$mode" "$r"
    done
  done
done
for c in "${READY[@]}"; do
  kill -0 "${SUT[$c]}" 2>/dev/null || log "WARNING: $c exited during the run: $(tail -3 "$RUN/$c.log" | tr '\n' ' ')"
done
if [ -n "$(grep -F envoy <<<"${READY[*]}")" ]; then
  # What wrk and h2load negotiated with Envoy: its per-listener TLS counters.
  curl -s http://127.0.0.1:19911/stats | grep -E 'listener\.127\.0\.0\.1_18310\.ssl\.(ciphers|curves|versions)' |
    tr '\n' ' ' | sed 's/^/envoy TLS counters: /' | tee -a "$OUT/run.log" || true; echo
fi

# ---------------------------------------------------------------- summary
echo
echo "medians over $ROUNDS rounds (rate; CPU µs per request or connection), every round in brackets"
echo "(* : other work used more than $FOREIGN_MAX cores during that round):"
python3 - "$RES" "$FOREIGN_MAX" <<'EOF' | tee "$OUT/summary.txt"
import sys, statistics
rows = {}
for line in open(sys.argv[1]):
    c, m, r, rate, cpu, f = line.split("\t")
    rows.setdefault((c, m), []).append((float(rate), float(cpu), "*" if float(f) > float(sys.argv[2]) else ""))
for (c, m), v in rows.items():
    rates = [x for x, _, _ in v]; cpus = [y for _, y, _ in v]
    print("%-9s %-6s %9.1f/s [%s]   %7.2f us [%s]" % (c, m, statistics.median(rates),
          ", ".join("%.0f%s" % (x, b) for x, _, b in v), statistics.median(cpus), ", ".join("%.1f%s" % (y, b) for _, y, b in v)))
EOF
echo "raw output in $OUT"
