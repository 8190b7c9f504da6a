#!/usr/bin/env python3
"""How often would the clean-model line of issue #6 fail, per DAWN key?

Reads the `verify-scores.jsonl` that `dawn_acceptance` writes (every verified model's
probabilities on its marks, with the victim's), keeps the 20 clean models, their scores and the
marked inputs, redraws the watermark labels uniformly over the 9 wrong labels (a simulated key),
and evaluates on each simulated key

- the fifth-session decision: min(p_log_gap/0.495, p_reference_gap/0.495, p_fingerprint/0.01),
- the session-4 decision: min(p_top_among_wrong/0.495, p_rank_sum/0.495, p_fingerprint/0.01),

with the fingerprint p drawn as an independent uniform (the fingerprint test uses its own keyed
inputs). Prints P(some clean model has p <= 0.01) per key and the per-model rate.

Usage: dawn_clean_null.py OUT/verify-scores.jsonl [KEYS]
(the statistics follow mamori_defense::verify: gaps in 1/8 nat capped at 8 nats, the reference
lift with probabilities floored at 1e-3, ties counted against the watermark label in ranks).
"""
import json
import math
import sys
from math import comb

import numpy as np

STEP, CAP, FLOOR = 0.125, 64, 1e-3


def log_gaps(p, y):
    wrong = [j for j in range(len(p)) if j != y]
    ln = [math.log(p[j]) if p[j] > 0 else None for j in wrong]
    fin = [v for v in ln if v is not None]
    if not fin:
        return np.full(len(wrong), CAP)
    best = max(fin)
    return np.array([CAP if v is None else min(CAP, int(round((best - v) / STEP))) for v in ln])


def reference_gaps(p, q, y):
    wrong = [j for j in range(len(p)) if j != y]
    d = [math.log(max(p[j], FLOOR)) - math.log(max(q[j], FLOOR)) for j in wrong]
    best = max(d)
    return np.array([min(CAP, int(round((best - v) / STEP))) for v in d])


def ranks(p, y):
    wrong = [j for j in range(len(p)) if j != y]
    return np.array([sum(1 for k in wrong if k != j and p[k] >= p[j]) for j in wrong])


def null_cdf(rows):
    top = sum(int(r.max()) for r in rows)
    dist = np.zeros(top + 1)
    dist[0] = 1.0
    for r in rows:
        nxt = np.zeros(top + 1)
        for v in r:
            v = int(v)
            nxt[v:] += dist[: top + 1 - v] / len(r)
        dist = nxt
    return np.cumsum(dist)


def binom_tail(n, k, p):
    return min(1.0, sum(comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1)))


def main():
    recs = [json.loads(line) for line in open(sys.argv[1])]
    keys = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
    clean = [r for r in recs if r["row"].startswith("clean")]
    n = len(clean[0]["true"])
    models = []
    for r in clean:
        g = np.array([log_gaps(p, y) for y, p in zip(r["true"], r["probs"])])
        f = np.array([reference_gaps(p, q, y) for y, p, q in zip(r["true"], r["probs"], r["reference"])])
        rk = np.array([ranks(p, y) for y, p in zip(r["true"], r["probs"])])
        models.append((g, f, rk, null_cdf(list(g)), null_cdf(list(f))))
    rank_cdf = null_cdf([np.arange(9)] * n)
    rng = np.random.default_rng(1)
    tails = {}
    new_fail = new_below = old_fail = old_below = 0
    rows = np.arange(n)
    for _ in range(keys):
        w = rng.integers(0, 9, size=n)
        new, old = [], []
        for g, f, rk, cg, cf in models:
            fp = rng.random()
            pg, pf = cg[g[rows, w].sum()], cf[f[rows, w].sum()]
            new.append(min(1, pg / 0.495, pf / 0.495, fp / 0.01))
            t = int((rk[rows, w] == 0).sum())
            if t not in tails:
                tails[t] = binom_tail(n, t, 1 / 9)
            pr = rank_cdf[rk[rows, w].sum()]
            old.append(min(1, tails[t] / 0.495, pr / 0.495, fp / 0.01))
        new, old = np.array(new), np.array(old)
        new_below += (new <= 0.01).sum()
        new_fail += (new <= 0.01).any()
        old_below += (old <= 0.01).sum()
        old_fail += (old <= 0.01).any()
    m = keys * len(models)
    print(f"{keys} simulated keys, {len(models)} clean models, {n} marks")
    print(f"gap decision:       P(some clean p <= 0.01) = {new_fail / keys:.3f}, per model {new_below / m:.4f}")
    print(f"session-4 decision: P(some clean p <= 0.01) = {old_fail / keys:.3f}, per model {old_below / m:.4f}")


if __name__ == "__main__":
    main()
