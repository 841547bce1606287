#!/usr/bin/env python3
"""Helpers of bench/endpoints-scale.sh (Python 3 standard library only).

  gen       writes a config of N services x E endpoints: per service a STATIC ServiceEntry, a
            VirtualService on the `edge` gateway (host svc-<i>.bench), a DestinationRule with
            connection-pool limits and outlier detection, and a ResiliencePolicy with a
            destination breaker, an endpoint breaker and latency ejection: every per-endpoint
            structure Tripline has is on. The endpoints of the first and the last service are
            a real upstream on 127.0.0.1 (ports UPSTREAM..UPSTREAM+E-1); the others'
            addresses (10.x.y.z) never see traffic. `--variant 1` changes every service's connect timeout and gives
            service 1 one endpoint more, so a reload between the variants rebuilds every
            cluster and changes an endpoint set.
  upstream  an HTTP/1.1 keep-alive server answering `200 ok` on E consecutive ports.
  load      a fixed-rate, open-loop client: C keep-alive connections share RPS requests a
            second for SECONDS; a request that had to wait for its connection's previous
            response is timed from when it was due (so a stalled proxy shows in every
            request that waited), any other from when it was sent; the p50/p99/max are
            printed as JSON.
            With `--record FILE`, also writes one line a request: when it was due or sent
            (Unix time, s) and its latency (s).
  burn      a control for the latency runs: THREADS processes that spin on the CPU for
            SECONDS, as a reload's parsing threads do, without touching the proxy.
  split     reads a `--record` file and a file of windows (`start end` in Unix time, one a
            line) and prints, as JSON, the p50/p99/max of the requests that overlap a window
            and of all the others: the same run, so the same
            machine noise, split by whether a reload (or a burn) was going on.
"""
import argparse
import asyncio
import json
import sys
import time


def gen(a):
    out = [
        "apiVersion: networking.istio.io/v1",
        "kind: Gateway",
        "metadata: {name: edge}",
        "spec:",
        "  servers:",
        f"  - port: {{number: {a.listen}, name: http, protocol: HTTP}}",
        "    bind: 127.0.0.1",
        '    hosts: ["*"]',
    ]
    timeout = "500ms" if a.variant == 0 else "750ms"
    for i in range(a.services):
        n = a.endpoints + (1 if a.variant == 1 and i == 1 else 0)
        if i in (0, a.services - 1):
            eps = [f"  - {{address: 127.0.0.1, ports: {{http: {a.upstream + j}}}}}" for j in range(n)]
        else:
            eps = [
                f"  - {{address: 10.{i >> 16 & 255}.{i >> 8 & 255}.{(i & 255)}, ports: {{http: {8000 + j}}}}}"
                for j in range(n)
            ]
        host = f"svc-{i}.bench"
        out += [
            "---",
            "apiVersion: networking.istio.io/v1",
            "kind: ServiceEntry",
            f"metadata: {{name: svc-{i}}}",
            "spec:",
            f"  hosts: [{host}]",
            "  ports: [{number: 80, name: http, protocol: HTTP}]",
            "  resolution: STATIC",
            "  endpoints:",
            *eps,
            "---",
            "apiVersion: networking.istio.io/v1",
            "kind: VirtualService",
            f"metadata: {{name: svc-{i}}}",
            "spec:",
            f"  hosts: [{host}]",
            "  gateways: [edge]",
            "  http:",
            f"  - route: [{{destination: {{host: {host}}}}}]",
            "---",
            "apiVersion: networking.istio.io/v1",
            "kind: DestinationRule",
            f"metadata: {{name: svc-{i}}}",
            "spec:",
            f"  host: {host}",
            "  trafficPolicy:",
            "    connectionPool:",
            f"      tcp: {{maxConnections: 100, connectTimeout: {timeout}}}",
            "      http: {http1MaxPendingRequests: 100, http2MaxRequests: 1000}",
            "    outlierDetection: {consecutive5xxErrors: 5, interval: 10s, baseEjectionTime: 30s, maxEjectionPercent: 50}",
            "---",
            "apiVersion: tripline.dev/v1alpha1",
            "kind: ResiliencePolicy",
            f"metadata: {{name: svc-{i}}}",
            "spec:",
            f"  target: {{host: {host}}}",
            "  circuitBreaker: {consecutiveFailures: 10, failureRatio: {threshold: 0.5, minimumRequests: 20}, window: 10s}",
            "  endpointCircuitBreaker: {consecutiveFailures: 5, slowCalls: {duration: 1s, threshold: 0.5, minimumRequests: 20}, window: 10s}",
            "  outlierDetection:",
            "    latency: {percentile: 0.99, factor: 3, minimumHosts: 3, requestVolume: 50, minimumLatency: 100ms}",
        ]
    with open(a.out, "w") as f:
        f.write("\n".join(out) + "\n")


async def serve_ok(reader, writer):
    resp = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            if not head:
                break
            writer.write(resp)
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
        pass
    writer.close()


async def upstream(a):
    servers = [await asyncio.start_server(serve_ok, "127.0.0.1", a.port + j) for j in range(a.count)]
    print("ready", flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


async def one_conn(a, due_times, lat, errors, starts):
    reader, writer = await asyncio.open_connection("127.0.0.1", a.port)
    req = f"GET / HTTP/1.1\r\nhost: {a.host}\r\n\r\n".encode()
    loop = asyncio.get_running_loop()
    free_at = loop.time()
    for due in due_times:
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        # A request that waited for its connection's previous response counts that wait (an
        # open-loop client would have sent it on time); one that only waited for the event
        # loop's timer (whole milliseconds) starts when it is sent.
        started = due if free_at > due else loop.time()
        writer.write(req)
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        if length:
            await reader.readexactly(length)
        if not head.startswith(b"HTTP/1.1 200"):
            errors.append(head.split(b"\r\n", 1)[0].decode(errors="replace"))
        free_at = loop.time()
        lat.append(free_at - started)
        starts.append(started)
    writer.close()


async def load(a):
    loop = asyncio.get_running_loop()
    total = int(a.rps * a.seconds)
    start = loop.time() + 0.1
    # Request k is due at start + k / rps; connection c sends requests c, c + C, c + 2C, ...
    dues = [[start + k / a.rps for k in range(c, total, a.conns)] for c in range(a.conns)]
    lat, errors, starts = [], [], []
    await asyncio.wait_for(
        asyncio.gather(*(one_conn(a, d, lat, errors, starts) for d in dues)),
        timeout=a.seconds + 30,
    )
    if a.record:
        to_unix = time.time() - loop.time()
        with open(a.record, "w") as f:
            for t, l in zip(starts, lat):
                f.write(f"{t + to_unix:.6f} {l:.6f}\n")
    print(json.dumps(dict(summary(lat), errors=len(errors))))


def summary(lat):
    lat = sorted(lat)
    if not lat:
        return {"requests": 0}

    def pct(q):
        return round(lat[min(len(lat) - 1, int(q * len(lat)))] * 1e6)

    return {"requests": len(lat), "p50_us": pct(0.5), "p99_us": pct(0.99),
            "max_us": round(lat[-1] * 1e6)}


def split(a):
    windows = [tuple(map(float, line.split())) for line in open(a.windows) if line.strip()]
    inside, outside = [], []
    for line in open(a.record):
        t, l = map(float, line.split())
        # Inside if any part of the request overlaps a window.
        (inside if any(t <= e and s <= t + l for s, e in windows) else outside).append(l)
    i, o = summary(inside), summary(outside)
    if a.brief:
        ratio = f"{i['p99_us'] / o['p99_us']:.2f}" if i["requests"] and o["requests"] else "-"
        print(f"{i.get('p99_us', '-')}/{o.get('p99_us', '-')} = {ratio} ({i['requests']} in)")
    else:
        print(json.dumps({"inside": i, "outside": o}))


def spin(seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def burn(a):
    import multiprocessing

    procs = [multiprocessing.Process(target=spin, args=(a.seconds,)) for _ in range(a.threads)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("gen")
    g.add_argument("--services", type=int, required=True)
    g.add_argument("--endpoints", type=int, default=10)
    g.add_argument("--listen", type=int, default=18400)
    g.add_argument("--upstream", type=int, default=18410)
    g.add_argument("--variant", type=int, default=0, choices=[0, 1])
    g.add_argument("--out", required=True)
    u = sub.add_parser("upstream")
    u.add_argument("--port", type=int, default=18410)
    u.add_argument("--count", type=int, default=10)
    ld = sub.add_parser("load")
    ld.add_argument("--port", type=int, default=18400)
    ld.add_argument("--host", default="svc-0.bench")
    ld.add_argument("--rps", type=float, default=500)
    ld.add_argument("--seconds", type=float, default=10)
    ld.add_argument("--conns", type=int, default=8)
    ld.add_argument("--record")
    sp = sub.add_parser("split")
    sp.add_argument("--record", required=True)
    sp.add_argument("--windows", required=True)
    sp.add_argument("--brief", action="store_true", help="p99 inside/outside = ratio (requests inside)")
    b = sub.add_parser("burn")
    b.add_argument("--threads", type=int, default=2)
    b.add_argument("--seconds", type=float, default=0.6)
    a = p.parse_args()
    if a.cmd == "gen":
        gen(a)
    elif a.cmd == "burn":
        burn(a)
    elif a.cmd == "split":
        split(a)
    elif a.cmd == "upstream":
        asyncio.run(upstream(a))
    else:
        asyncio.run(load(a))
    return 0


if __name__ == "__main__":
    sys.exit(main())
