#!/usr/bin/env bash
# Where Tripline's TLS time goes: user-space instructions per request or per connection under
# valgrind's callgrind, with bench/peers-tls.yaml (the certificate made here as in
# tls-peers.sh), and the top functions by inclusive cost. Kernel time is not counted: see
# tls-peers.sh's user/kernel split for that.
#
#   bash bench/tls-callgrind.sh [h1|h2|full|resumed] [BINARY]   # default h1, target/release/tripline
#   TOP=40 bash bench/tls-callgrind.sh full
#
# h1: 20,000 requests over 16 keep-alive TLS connections (h2load --h1, ALPN http/1.1);
# h2: 20,000 requests over 8 connections x 8 streams (ALPN h2); full / resumed: bench/tls/hsload.go
# (Go's crypto/tls, built here) for DUR seconds (default 20), 4 connections at once, each a TLS 1.3
# handshake (full, or resumed with a ticket) and one `GET /` with `Connection: close`.
# The profile is left in /tmp/callgrind.tripline-tls.<mode>.out.1 for callgrind_annotate.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
MODE=${1:-h1}
BIN=${2:-$HERE/../target/release/tripline}
DUR=${DUR:-20}
TOP=${TOP:-45}
N=20000
OUT=/tmp/callgrind.tripline-tls.$MODE.out
CLIENT_CONF=$HERE/tls/client-openssl.cnf
# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -keyout "$RUN/key.pem" -out "$RUN/cert.pem" -subj "/CN=localhost" \
  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" 2>/dev/null
cp "$HERE/peers-tls.yaml" "$RUN/peers-tls.yaml"
start_upstream
rm -f "$OUT" "$OUT".*
valgrind --tool=callgrind --callgrind-out-file="$OUT" "$BIN" run -c "$RUN/peers-tls.yaml" --workers 1 \
  --log-level error --admin 127.0.0.1:15132 >"$RUN/tripline.log" 2>&1 &
T=$!
PIDS+=($T)
URL=https://127.0.0.1:18330/
export OPENSSL_CONF=$CLIENT_CONF
for _ in $(seq 100); do curl -skf -o /dev/null "$URL" && break; sleep 0.3; done
case $MODE in
  h1 | h2)
    if [ "$MODE" = h1 ]; then LOAD=(-c16 -m1 --h1); else LOAD=(-c8 -m8); fi
    h2load -n 2000 "${LOAD[@]}" "$URL" >/dev/null
    callgrind_control -z "$T" >/dev/null
    h2load -n "$N" "${LOAD[@]}" "$URL" | grep '^requests:'
    UNIT=request ;;
  full | resumed)
    (cd "$RUN" && go build -o "$RUN/hsload" "$HERE/tls/hsload.go")
    args=(-addr 127.0.0.1:18330 -c 4 -req); [ "$MODE" = resumed ] && args+=(-resume)
    "$RUN/hsload" "${args[@]}" -d 3s >/dev/null
    callgrind_control -z "$T" >/dev/null
    out=$("$RUN/hsload" "${args[@]}" -d "${DUR}s")
    echo "$out"
    N=$(awk '{print $2}' <<<"$out")
    UNIT=connection ;;
  *) echo "mode: h1, h2, full or resumed" >&2; exit 2 ;;
esac
callgrind_control -d "$T" >/dev/null
total=$(callgrind_annotate "$OUT.1" 2>/dev/null | awk '/PROGRAM TOTALS/{gsub(",","",$1); print $1}')
echo "$MODE: $((total / N)) instructions per $UNIT ($OUT.1)"
echo "top $TOP by inclusive cost (instructions per $UNIT, share of the total):"
callgrind_annotate --inclusive=yes "$OUT.1" 2>/dev/null |
  sed -nE 's#^ *([0-9,]+) +\( *[0-9.]+%\) +#\1 #p' | grep -v 'PROGRAM TOTALS' | head -n "$TOP" |
  sed -E 's#/root/.cargo/registry/src/index.crates.io-[0-9a-f]+/##' |
  awk -v n="$N" -v t="$total" '{ c = $1; gsub(",", "", c); $1 = ""; printf "%10d  %5.1f%%  %s\n", c / n, 100 * c / t, substr($0, 2, 160) }'
