#!/usr/bin/env python3
"""Tripline's Kubernetes source at scale (issue 20's benchmark), against the real API server
of ../shared/tools/kube-test:

1. memory: the proxy's RSS with SERVICES Services of ENDPOINTS endpoints each, against the
   same proxy with 10 Services of one endpoint: bytes per endpoint;
2. time from an EndpointSlice change to traffic: a slice of one Service is moved to a new
   endpoint (another upstream port), and the proxy is polled until a request reaches it;
   p50 and p99 over CHANGES changes;
3. endpoint updates under load: h2load sends a fixed-rate load through the proxy to one
   Service while this script patches other Services' slices as fast as it can (one PATCH at a
   time over HTTP/1.1 keep-alive per updater), each PATCH moving PER_UPDATE of the slice's
   endpoints to new addresses (a rollout step), for DURATION seconds; against the same load
   without updates. Request latency p99 of both, and the update rate reached (slice writes
   and endpoint changes per second).

   With --pin, the proxies, nginx and h2load run on CPU 0 and the API server, etcd and this
   script's updaters on CPU 1, as a cluster would keep the control plane off the proxy's
   node: the latency then shows what the updates cost the proxy, not what the API server
   takes from the machine. With --pin-kube-thread as well, the proxies' event loops stay on
   CPU 0 and their other threads (the Kubernetes watchers' `tripline-kube`, the low-priority
   reload thread) go to CPU 1, as on a node with a core to spare: the latency then shows what
   the updates cost the request path itself.

    python3 bench/kube-scale.py [--tripline target/release/tripline] [--shared ../shared]

Stdlib only: the API server is spoken to over HTTPS with the kubeconfig's client
certificate. Needs h2load (nghttp2-client) and nginx-free upstreams: the upstreams are this
script's own (a threaded HTTP server answering 200 "ok").
"""
import argparse
import http.client
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Api:
    """A keep-alive HTTPS connection to the API server with the admin client certificate."""

    def __init__(self, kube_dir, port):
        ctx = ssl.create_default_context(cafile=f"{kube_dir}/pki/ca.crt")
        ctx.load_cert_chain(f"{kube_dir}/pki/admin.crt", f"{kube_dir}/pki/admin.key")
        self.conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx)

    def call(self, method, path, body=None, content_type="application/json"):
        data = json.dumps(body).encode() if body is not None else None
        headers = {"content-type": content_type} if data else {}
        self.conn.request(method, path, body=data, headers=headers)
        r = self.conn.getresponse()
        payload = r.read()
        if r.status >= 300 and r.status != 409:
            raise RuntimeError(f"{method} {path}: {r.status} {payload[:300]!r}")
        return r.status


def service(name, ns):
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
            "spec": {"clusterIP": "None", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}}


def slice_of(svc, ns, addresses, port, name=None):
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name or f"{svc}-1", "namespace": ns,
                         "labels": {"kubernetes.io/service-name": svc}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
            "endpoints": [{"addresses": [a], "conditions": {"ready": True}} for a in addresses]}


class Ok(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()
        # Headers and body are two writes: without this, Nagle and delayed ACKs add 40 ms.
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_GET(self):
        body = self.server.tag
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


def upstream(tag):
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Ok)
    srv.tag = tag.encode()
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv.server_address[1]


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def wait_ready(admin, timeout=120):
    end = time.time() + timeout
    while time.time() < end:
        try:
            c = http.client.HTTPConnection(*admin, timeout=1)
            c.request("GET", "/ready")
            if c.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError("tripline not ready")


def get(mesh, host):
    c = http.client.HTTPConnection(*mesh, timeout=2)
    c.request("GET", "/", headers={"Host": host})
    r = c.getresponse()
    return r.status, r.read()


def pin_side_threads(pid):
    """Every thread of `pid` but the main one (the event loop with --workers 1) to CPU 1."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        if int(tid) != pid:
            os.sched_setaffinity(int(tid), {1})


def start_proxy(command, kubeconfig, mesh, admin, log):
    env = dict(os.environ, KUBECONFIG=kubeconfig)
    p = subprocess.Popen(command + ["run", "--kubernetes", "--namespace", "bench", "--workload-namespace", "bench",
                          "--mesh-bind", f"{mesh[0]}:{mesh[1]}", "--admin", f"{admin[0]}:{admin[1]}",
                          "--workers", "1", "--log-level", "warn"], env=env, stdout=log, stderr=log)
    wait_ready(admin)
    return p


def settle(admin, want_services, timeout=300):
    """Waits until the proxy's /clusters lists want_services clusters."""
    end = time.time() + timeout
    while time.time() < end:
        c = http.client.HTTPConnection(*admin, timeout=5)
        c.request("GET", "/clusters")
        n = len(json.loads(c.getresponse().read()).get("clusters", []))
        if n >= want_services:
            return
        time.sleep(0.5)
    raise RuntimeError(f"the proxy never listed {want_services} clusters")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tripline", default="target/release/tripline")
    ap.add_argument("--shared", default=os.environ.get("TRIPLINE_SHARED", "../shared"))
    ap.add_argument("--services", type=int, default=1000)
    ap.add_argument("--endpoints", type=int, default=10)
    ap.add_argument("--changes", type=int, default=50)
    ap.add_argument("--duration", type=int, default=20)
    ap.add_argument("--rate", type=int, default=2000)
    ap.add_argument("--updaters", type=int, default=4)
    ap.add_argument("--per-update", type=int, default=1, help="endpoints moved by each slice PATCH")
    ap.add_argument("--pin", action="store_true", help="data plane on CPU 0, control plane on CPU 1")
    ap.add_argument("--pin-kube-thread", action="store_true",
                    help="with --pin: the proxies' threads other than the event loop on CPU 1")
    a = ap.parse_args()
    tripline = os.path.abspath(a.tripline)
    work = tempfile.mkdtemp(prefix="tripline-kube-scale.")
    kube = f"{work}/kube"
    api_port, etcd_port = free_port(), 24790
    env = dict(os.environ, KT_API_PORT=str(api_port), KT_ETCD_PORT=str(etcd_port))
    subprocess.run(["bash", f"{a.shared}/tools/kube-test/start.sh", kube], env=env, check=True, capture_output=True)
    data_plane = ["taskset", "-c", "0"] if a.pin else []
    if a.pin:
        # The control plane (etcd, the API server) and this script's updaters on CPU 1.
        for name in ("etcd", "kube-apiserver"):
            for pid in subprocess.run(["pgrep", "-f", name], capture_output=True, text=True).stdout.split():
                subprocess.run(["taskset", "-a", "-p", "-c", "1", pid], capture_output=True)
        os.sched_setaffinity(0, {1})
    log = open(f"{work}/tripline.log", "w")
    procs = []
    try:
        api = Api(kube, api_port)
        api.call("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "bench"}})
        # The load's upstream: the peers harness's nginx (`return 200 "ok"` on 18080).
        run = f"{work}/nginx"
        os.makedirs(f"{run}/tmp", exist_ok=True)
        nginx = subprocess.Popen(data_plane + ["nginx", "-p", f"{run}/", "-c", f"{os.path.abspath(a.shared)}/bench/conf/upstream-nginx.conf",
                                  "-e", f"{run}/err.log", "-g", f"pid {run}/nginx.pid;"])
        procs.append(nginx)
        port = 18080
        # Baseline: 10 Services of one endpoint.
        for i in range(10):
            api.call("POST", "/api/v1/namespaces/bench/services", service(f"s{i}", "bench"))
            api.call("POST", "/apis/discovery.k8s.io/v1/namespaces/bench/endpointslices", slice_of(f"s{i}", "bench", ["127.0.0.1"], port))
        mesh, admin = ("127.0.0.1", free_port()), ("127.0.0.1", free_port())
        p = start_proxy(data_plane + [tripline], f"{kube}/kubeconfig", mesh, admin, log)
        if a.pin_kube_thread:
            pin_side_threads(p.pid)
        procs.append(p)
        settle(admin, 10)
        time.sleep(2)
        base_rss = rss_kib(p.pid)
        # Scale: SERVICES Services of ENDPOINTS endpoints (127.0.0.x addresses: never called).
        t0 = time.time()
        for i in range(10, a.services):
            api.call("POST", "/api/v1/namespaces/bench/services", service(f"s{i}", "bench"))
            addrs = [f"127.1.{i // 250}.{k + 1}" for k in range(a.endpoints)]
            api.call("POST", "/apis/discovery.k8s.io/v1/namespaces/bench/endpointslices", slice_of(f"s{i}", "bench", addrs, port))
        created = time.time() - t0
        settle(admin, a.services)
        time.sleep(3)
        rss = rss_kib(p.pid)
        endpoints = (a.services - 10) * a.endpoints
        per_endpoint = (rss - base_rss) * 1024 / endpoints
        print(f"memory: {base_rss} KiB with 10 Services, {rss} KiB with {a.services} x {a.endpoints} endpoints: "
              f"{per_endpoint:.0f} bytes per endpoint (objects created in {created:.1f} s)")

        # Change -> traffic: s0 moves between two upstreams.
        ports = [upstream("a"), upstream("b")]
        lat = []
        for n in range(a.changes):
            want = b"ab"[n % 2:n % 2 + 1]
            t = time.time()
            api.call("PATCH", "/apis/discovery.k8s.io/v1/namespaces/bench/endpointslices/s0-1",
                     {"ports": [{"name": "http", "port": ports[n % 2], "protocol": "TCP"}]},
                     content_type="application/merge-patch+json")
            while True:
                try:
                    if get(mesh, "s0")[1] == want:
                        break
                except OSError:
                    pass
                if time.time() - t > 30:
                    raise RuntimeError("a change never reached traffic")
                time.sleep(0.002)
            lat.append((time.time() - t) * 1000)
        lat.sort()
        p50, p99 = lat[len(lat) // 2], lat[min(len(lat) - 1, int(len(lat) * 0.99))]
        print(f"EndpointSlice change to traffic ({a.changes} changes at {a.services} Services): p50 {p50:.0f} ms, p99 {p99:.0f} ms")

        # Updates under load.
        url = f"http://{mesh[0]}:{mesh[1]}/"

        # A control: a proxy from a file, the same route to the same nginx, that reads nothing
        # from the API server. Loaded while the updates run, it shows what the machine's other
        # work (API server, etcd, the updaters, on the same two cores) costs a request.
        control_mesh, control_admin = ("127.0.0.1", free_port()), ("127.0.0.1", free_port())
        with open(f"{work}/control.yaml", "w") as f:
            f.write(f"""apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: s1}}
spec:
  hosts: [s1]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {port}}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: s1}}
spec:
  hosts: [s1]
  http: [{{route: [{{destination: {{host: s1}}}}]}}]
""")
        control = subprocess.Popen(data_plane + [tripline, "run", "-c", f"{work}/control.yaml", "--mesh-bind", f"{control_mesh[0]}:{control_mesh[1]}",
                                    "--admin", f"{control_admin[0]}:{control_admin[1]}", "--workers", "1", "--log-level", "warn"],
                                   stdout=log, stderr=log)
        procs.append(control)
        wait_ready(control_admin)
        if a.pin_kube_thread:
            pin_side_threads(control.pid)

        def run_load(tag, target=url):
            logf = f"{work}/h2load-{tag}.log"
            out = subprocess.run(data_plane + ["h2load", "--h1", "-c", "8", "--rps", str(a.rate // 8), "-D", str(a.duration),
                                  "--log-file", logf, "-H", ":authority: s1", target], capture_output=True, text=True).stdout
            if not os.path.exists(logf):
                raise RuntimeError(f"h2load wrote no log: {out[-500:]}")
            times = sorted(int(line.split()[2]) for line in open(logf) if line.strip())
            done = re.search(r"(\d+) succeeded, (\d+) failed", out)
            p99 = times[min(len(times) - 1, int(len(times) * 0.99))] / 1000 if times else float("nan")
            p50 = times[len(times) // 2] / 1000 if times else float("nan")
            return p50, p99, done.group(0) if done else out[-300:]

        if a.pin_kube_thread:
            # Threads started since (the low-priority reload thread) inherit CPU 0: again.
            pin_side_threads(p.pid)
            pin_side_threads(control.pid)
        quiet = run_load("quiet")
        stop = threading.Event()
        count = [0]

        lock = threading.Lock()

        def updater(w):
            u = Api(kube, api_port)
            i = w
            while not stop.is_set():
                svc = 10 + i % (a.services - 10)
                turn = i // (a.services - 10)
                # The slice keeps ENDPOINTS endpoints; PER_UPDATE of them get new addresses.
                moved = [f"127.2.{(turn * a.per_update + k) % 250}.{svc % 250 + 1}" for k in range(a.per_update)]
                kept = [f"127.1.{svc // 250}.{k + 1}" for k in range(a.per_update, a.endpoints)]
                eps = [{"addresses": [x], "conditions": {"ready": True}} for x in moved + kept]
                u.call("PATCH", f"/apis/discovery.k8s.io/v1/namespaces/bench/endpointslices/s{svc}-1",
                       {"endpoints": eps}, content_type="application/merge-patch+json")
                with lock:
                    count[0] += 1
                i += a.updaters

        # Several updaters, each on its own connection, each on its own Services.
        threads = [threading.Thread(target=updater, args=(w,), daemon=True) for w in range(a.updaters)]
        t0 = time.time()
        for th in threads:
            th.start()
        busy = run_load("updates")
        control_busy = run_load("control", f"http://{control_mesh[0]}:{control_mesh[1]}/")
        stop.set()
        for th in threads:
            th.join()
        rate = count[0] / (time.time() - t0)
        print(f"load {a.rate} rps for {a.duration} s, latency p50/p99: without updates {quiet[0]:.2f}/{quiet[1]:.2f} ms ({quiet[2]}); "
              f"with {rate:.0f} slice writes/s moving {rate * a.per_update:.0f} endpoints/s {busy[0]:.2f}/{busy[1]:.2f} ms ({busy[2]}); p99 {100 * (busy[1] / quiet[1] - 1):+.0f}%; "
              f"a proxy reading nothing from the API server, during the same updates: {control_busy[0]:.2f}/{control_busy[1]:.2f} ms")
    finally:
        for p in procs:
            p.terminate()
        subprocess.run(["bash", f"{a.shared}/tools/kube-test/stop.sh", kube], capture_output=True)
        print(f"(logs in {work})")


if __name__ == "__main__":
    sys.exit(main())
