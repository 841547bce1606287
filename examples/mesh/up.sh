#!/usr/bin/env bash
# The brief's mini-project on one machine: frontend -> backend -> db, each "pod" in a network
# namespace of its own (a veth on a bridge, its own IP) with its application (app.py) and a
# Tripline sidecar that `tripline iptables` put in its path. The sidecars read Services,
# EndpointSlices and the policies (policies.yaml) from a real Kubernetes API server
# (../shared/tools/kube-test). Needs root. Tear down with down.sh.
#
#   sudo examples/mesh/up.sh
#   curl -s http://10.250.0.10:8080/          # frontend -> backend -> db, each hop proxied
#   touch /tmp/tripline-mesh/db-fails          # db answers 500: backend's sidecar opens db's breaker
#   sudo examples/mesh/down.sh
#
# Env: TRIPLINE (the binary; default: tripline on PATH, else target/debug/tripline),
# TRIPLINE_SHARED (default ../shared beside the clone), STATE (default /tmp/tripline-mesh),
# KT_API_PORT / KT_ETCD_PORT (default 16480 / 23880), MESH_NET (default 10.250.0).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
STATE=${STATE:-/tmp/tripline-mesh}
NET=${MESH_NET:-10.250.0}
export KT_API_PORT=${KT_API_PORT:-16480} KT_ETCD_PORT=${KT_ETCD_PORT:-23880}
SHARED=${TRIPLINE_SHARED:-$ROOT/../shared}
TRIPLINE=${TRIPLINE:-$(command -v tripline || echo "$ROOT/target/debug/tripline")}
TRIPLINE=$(cd "$(dirname "$TRIPLINE")" && pwd)/$(basename "$TRIPLINE")
PODS=(frontend backend db)
declare -A IP=([frontend]=$NET.10 [backend]=$NET.11 [db]=$NET.12)
declare -A CLUSTER_IP=([frontend]=10.96.0.10 [backend]=10.96.0.11 [db]=10.96.0.12)

[ "$(id -u)" = 0 ] || { echo "up.sh: needs root (network namespaces, iptables)" >&2; exit 1; }
for tool in ip iptables-restore python3 kubectl setpriv curl; do
  command -v "$tool" >/dev/null || { echo "up.sh: needs $tool" >&2; exit 1; }
done
[ -x "$TRIPLINE" ] || { echo "up.sh: no tripline binary at $TRIPLINE (cargo build -p tripline, or set TRIPLINE)" >&2; exit 1; }
[ -f "$SHARED/tools/kube-test/start.sh" ] || { echo "up.sh: no $SHARED/tools/kube-test (set TRIPLINE_SHARED)" >&2; exit 1; }
# What an earlier run left behind (a bridge, pods) goes first.
STATE=$STATE bash "$HERE/down.sh" >/dev/null 2>&1 || true
mkdir -p "$STATE" && : > "$STATE/pids"
chmod 755 "$STATE"

echo "== the Kubernetes API server (kube-test) on 127.0.0.1:$KT_API_PORT"
bash "$SHARED/tools/kube-test/start.sh" "$STATE/kube" >/dev/null
export KUBECONFIG=$STATE/kube/kubeconfig

echo "== the pods' network: bridge ${NET}.1/24"
ip link add tlmesh0 type bridge
ip addr add "$NET.1/24" dev tlmesh0
ip link set tlmesh0 up
# The API server listens on loopback: a Tripline TCP route on the bridge carries the sidecars
# to it (their kubeconfig checks its certificate as `localhost`).
cat > "$STATE/api-forward.yaml" <<YAML
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: api}
spec:
  servers:
  - {port: {number: $KT_API_PORT, name: api, protocol: TCP}, bind: $NET.1, hosts: ["*"]}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: apiserver}
spec:
  hosts: [kube-apiserver.local]
  ports: [{number: $KT_API_PORT, name: tcp, protocol: TCP}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: api}
spec:
  hosts: ["*"]
  gateways: [api]
  tcp: [{route: [{destination: {host: kube-apiserver.local}}]}]
YAML
"$TRIPLINE" run -c "$STATE/api-forward.yaml" --admin 127.0.0.1:$((KT_API_PORT + 1)) >"$STATE/api-forward.log" 2>&1 &
echo $! >> "$STATE/pids"
mkdir -p "$STATE/pod-pki"
cp "$STATE/kube/pki/ca.crt" "$STATE/kube/pki/admin.crt" "$STATE/kube/pki/admin.key" "$STATE/pod-pki/"
chmod 755 "$STATE/pod-pki" && chmod 644 "$STATE/pod-pki/"*
cat > "$STATE/pod-kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: mesh
  cluster: {server: "https://$NET.1:$KT_API_PORT", certificate-authority: $STATE/pod-pki/ca.crt, tls-server-name: localhost}
users:
- name: sidecar
  user: {client-certificate: $STATE/pod-pki/admin.crt, client-key: $STATE/pod-pki/admin.key}
contexts:
- name: mesh
  context: {cluster: mesh, user: sidecar, namespace: shop}
current-context: mesh
KC
chmod 644 "$STATE/pod-kubeconfig"

echo "== Services, EndpointSlices, the definitions and the policies"
"$TRIPLINE" crds | kubectl apply -f - >/dev/null
kubectl create namespace shop >/dev/null
for pod in "${PODS[@]}"; do
  kubectl apply -f - >/dev/null <<OBJ
apiVersion: v1
kind: Service
metadata: {name: $pod, namespace: shop}
spec:
  clusterIP: ${CLUSTER_IP[$pod]}
  ports: [{name: http, port: 80, targetPort: 8080, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: $pod-1, namespace: shop, labels: {kubernetes.io/service-name: $pod}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints: [{addresses: [${IP[$pod]}], conditions: {ready: true}}]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: $pod, namespace: shop}
spec:
  workloadSelector: {labels: {app: $pod}}
  ingress: [{port: {number: 8080, protocol: HTTP, name: http}, defaultEndpoint: "127.0.0.1:8080"}]
OBJ
done
kubectl apply -f "$HERE/policies.yaml" >/dev/null
sleep 1   # the custom resources are served a moment after their definitions

echo "== the pods"
declare -A CALL=([frontend]=backend [backend]=db)
for pod in "${PODS[@]}"; do
  ns=tlmesh-$pod
  ip netns add "$ns"
  ip link add "tlm-$pod" type veth peer name eth0 netns "$ns"
  ip link set "tlm-$pod" master tlmesh0 up
  ip netns exec "$ns" ip addr add "${IP[$pod]}/24" dev eth0
  ip netns exec "$ns" ip link set eth0 up
  ip netns exec "$ns" ip link set lo up
  ip netns exec "$ns" ip route add default via "$NET.1"
  ip netns exec "$ns" "$TRIPLINE" iptables install --proxy-uid 1337
  next=${CALL[$pod]:-}
  ip netns exec "$ns" env NAME="$pod" FAIL_FILE="$STATE/$pod-fails" \
    CALL_URL="${next:+http://${CLUSTER_IP[$next]:-}/}" CALL_HOST="$next" \
    python3 "$HERE/app.py" >"$STATE/$pod-app.log" 2>&1 &
  echo $! >> "$STATE/pids"
  ip netns exec "$ns" setpriv --reuid=1337 --regid=1337 --clear-groups \
    env KUBECONFIG="$STATE/pod-kubeconfig" "$TRIPLINE" run --kubernetes --namespace shop \
    --workload-namespace shop --workload-labels "app=$pod" --mesh-bind 127.0.0.1:15001 \
    --inbound-capture 0.0.0.0:15006 --admin "${IP[$pod]}:15000" >"$STATE/$pod-sidecar.log" 2>&1 &
  echo $! >> "$STATE/pids"
done
# Ready: each sidecar's /ready, and each application answering on its own loopback.
for pod in "${PODS[@]}"; do
  for _ in $(seq 1 100); do
    curl -sf "http://${IP[$pod]}:15000/ready" >/dev/null 2>&1 &&
      ip netns exec "tlmesh-$pod" curl -s -o /dev/null http://127.0.0.1:8080/healthz 2>/dev/null && break
    sleep 0.1
  done
  curl -sf "http://${IP[$pod]}:15000/ready" >/dev/null || { echo "up.sh: $pod's sidecar is not ready; see $STATE/$pod-sidecar.log" >&2; exit 1; }
  ip netns exec "tlmesh-$pod" curl -s -o /dev/null http://127.0.0.1:8080/healthz || { echo "up.sh: $pod's application does not answer; see $STATE/$pod-app.log" >&2; exit 1; }
done
echo "== up: curl -s http://${IP[frontend]}:8080/   (sidecar admin: http://<pod ip>:15000/)"
