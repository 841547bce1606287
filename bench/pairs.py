#!/usr/bin/env python3
"""Pairs Tripline's figures with HAProxy's (and Envoy's) repeat by repeat over run-peers.sh results.

In one harness run, repeat r of each case runs minutes apart from repeat r of the others, and
the machine's noise drifts in between. Pairing two proxies' figures of the same repeat and
counting which is better (a sign test) says whether one proxy wins more often than chance
would make it, which one run's medians cannot. Three comparisons, one per same-run target:

- CPU per request at saturation (wrk, h2load): Tripline against HAProxy;
- p50 and p99 at 5,000 rps (oha): Tripline against HAProxy;
- throughput at saturation: Tripline's requests per second over Envoy's, against 2.5.

    python3 bench/pairs.py /tmp/peers-bench-results/2026*      # any number of result dirs
"""
import glob
import json
import math
import os
import re
import statistics
import sys

SATURATION = {"h1": ("wrk", r"Requests/sec:\s+([\d.]+)"), "h2": ("h2load", r"finished in [\d.]+\w+, ([\d.]+) req/s")}


def pct(path, key):
    """A latency percentile (µs) from a kept oha output."""
    try:
        with open(path) as f:
            t = f.read()
        return json.loads(t[t.index("{"):])["latencyPercentiles"][key] * 1e6
    except (OSError, ValueError, KeyError, TypeError):
        return None


def rps(path, pattern):
    try:
        with open(path) as f:
            m = re.search(pattern, f.read())
    except OSError:
        return None
    return float(m.group(1)) if m else None


def cpu_per_request(path, pattern):
    """The proxy's CPU µs per request in one saturation run: its CPU ticks over the requests."""
    r = rps(path, pattern)
    try:
        with open(path[: -len(".txt")] + ".cpu") as f:
            kv = dict(x.split("=") for x in f.read().split())
        cores = int(kv["sut_ticks"]) / float(kv["clk_tck"]) / float(kv["wall_s"])
    except (OSError, KeyError, ValueError):
        return None
    return cores * 1e6 / r if r else None


def sign_test(wins, losses):
    """Two-sided p-value of `wins` against `losses` under a fair coin (ties dropped)."""
    n = wins + losses
    if n == 0:
        return 1.0
    k = min(wins, losses)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def pairs(dirs, pattern, figure, other):
    """(Tripline's figure, the other case's) for every repeat both have, over all `dirs`."""
    out = []
    for d in dirs:
        for f in sorted(glob.glob(os.path.join(d, pattern.format(case="tripline", r="*")))):
            r = f.rsplit(".", 2)[-2]
            t, o = figure(f), figure(os.path.join(d, pattern.format(case=other, r=r)))
            if t is not None and o is not None:
                out.append((t, o))
    return out


def report(name, diffs, unit):
    lower = sum(1 for x in diffs if x < 0)
    higher = sum(1 for x in diffs if x > 0)
    print(f"{name}: {len(diffs)} pairs; Tripline lower in {lower}, higher in {higher}; "
          f"median difference {statistics.median(diffs):+.1f} {unit}; sign test p = {sign_test(lower, higher):.2f}")


def main(dirs):
    for mode, (tool, pattern) in SATURATION.items():
        cpu = pairs(dirs, f"{{case}}.{tool}.{{r}}.txt", lambda p: cpu_per_request(p, pattern), "haproxy")
        if cpu:
            report(f"{mode} CPU us/req vs HAProxy", [t - h for t, h in cpu], "us")
        ratio = pairs(dirs, f"{{case}}.{tool}.{{r}}.txt", lambda p: rps(p, pattern), "envoy")
        if ratio:
            ratios = [t / e for t, e in ratio]
            above = sum(1 for x in ratios if x >= 2.5)
            print(f"{mode} throughput / Envoy's: {len(ratios)} pairs; at least 2.5x in {above}; "
                  f"median {statistics.median(ratios):.2f}x")
    for mode in ("h1", "h2"):
        for key in ("p50", "p99"):
            lat = pairs(dirs, f"{{case}}.oha-{mode}.{{r}}.txt", lambda p: pct(p, key), "haproxy")
            if lat:
                report(f"{mode} {key} at 5k rps vs HAProxy", [t - h for t, h in lat], "us")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
