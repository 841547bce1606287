#!/usr/bin/env bash
# Tears down what up.sh started: the processes, the pods' namespaces (their iptables rules and
# veths go with them), the bridge and the API server.
STATE=${STATE:-/tmp/tripline-mesh}
HERE=$(cd "$(dirname "$0")" && pwd)
SHARED=${TRIPLINE_SHARED:-$HERE/../../../shared}
if [ -f "$STATE/pids" ]; then
  pids=$(cat "$STATE/pids")
  for pid in $pids; do kill "$pid" 2>/dev/null || true; done
  # The sidecars drain for up to 5 s; a namespace lives on while a process is in it.
  for _ in $(seq 1 60); do
    alive=0
    for pid in $pids; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.1
  done
  for pid in $pids; do kill -9 "$pid" 2>/dev/null || true; done
fi
for pod in frontend backend db; do
  ip netns del "tlmesh-$pod" 2>/dev/null || true
  ip link del "tlm-$pod" 2>/dev/null || true
done
ip link del tlmesh0 2>/dev/null || true
[ -d "$STATE/kube" ] && bash "$SHARED/tools/kube-test/stop.sh" "$STATE/kube" 2>/dev/null
rm -rf "$STATE"
echo "== down"
