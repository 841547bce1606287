#!/usr/bin/env python3
"""Pairs Tripline's and HAProxy's fixed-rate latency repeat by repeat over run-peers.sh results.

In one harness run, repeat r of each case runs minutes apart from repeat r of the others, and
the machine's noise drifts in between. Pairing the two proxies' figures of the same repeat and
counting which is lower (a sign test) says whether one proxy's p99 is lower more often than
chance would make it, which one run's medians of three cannot.

    python3 bench/p99-pairs.py /tmp/peers-bench-results/2026*      # any number of result dirs
"""
import glob
import json
import math
import os
import statistics
import sys


def pct(path, key):
    try:
        with open(path) as f:
            return json.load(f)["latencyPercentiles"][key] * 1e6
    except (OSError, ValueError, KeyError, TypeError):
        return None


def sign_test(wins, losses):
    """Two-sided p-value of `wins` against `losses` under a fair coin (ties dropped)."""
    n = wins + losses
    if n == 0:
        return 1.0
    k = min(wins, losses)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def main(dirs):
    for mode in ("h1", "h2"):
        for key in ("p50", "p99"):
            diffs = []
            for d in dirs:
                for f in sorted(glob.glob(os.path.join(d, f"tripline.oha-{mode}.*.txt"))):
                    r = f.rsplit(".", 2)[-2]
                    t = pct(f, key)
                    h = pct(os.path.join(d, f"haproxy.oha-{mode}.{r}.txt"), key)
                    if t is not None and h is not None:
                        diffs.append(t - h)
            if not diffs:
                continue
            lower = sum(1 for x in diffs if x < 0)
            higher = sum(1 for x in diffs if x > 0)
            print(f"{mode} {key}: {len(diffs)} pairs; Tripline lower in {lower}, higher in {higher}; "
                  f"median difference {statistics.median(diffs):+.0f} us; sign test p = {sign_test(lower, higher):.2f}")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
