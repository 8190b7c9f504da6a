#!/usr/bin/env python3
"""Would another decision rule make issue #6's clean-model line hold on (almost) every key?

Same simulation as dawn_clean_null.py (the run's 20 real clean models, watermark labels redrawn
uniformly per simulated key, the fingerprint p an independent uniform), for four rules:

- cur:     the shipped decision, min(p_gap/0.495, p_ref/0.495, p_fp/0.01);
- sum:     one exact statistic, the per-mark sum of the raw and the reference gap, min(p_sum/0.99, p_fp/0.01);
- sum_ref: min(p_sum/0.495, p_ref/0.495, p_fp/0.01);
- w9:      the shipped statistics with the alpha split 0.9 / 0.09 / 0.01.

Prints P(some clean model has p <= 0.01) per key and the per-model rate.
Usage: dawn_clean_rules.py OUT/verify-scores.jsonl [KEYS]
"""
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dawn_clean_null import log_gaps, reference_gaps, null_cdf  # noqa: E402

def load(path):
    return [json.loads(l) for l in open(path)]

def stats(r):
    # per-mark gap rows over the 9 wrong labels (indexed by wrong-label position)
    g = np.array([log_gaps(p, y) for y, p in zip(r['true'], r['probs'])])
    f = np.array([reference_gaps(p, q, y) for y, p, q in zip(r['true'], r['probs'], r['reference'])])
    return g, f

def main():
    keys = int(sys.argv[2]) if len(sys.argv) > 2 else 500
    recs = load(sys.argv[1])
    clean = [r for r in recs if r['row'].startswith('clean')]
    n = len(clean[0]['true'])
    models = []
    for r in clean:
        g, f = stats(r)
        s = g + f
        models.append((g, f, s, null_cdf(list(g)), null_cdf(list(f)), null_cdf(list(s))))
    rng = np.random.default_rng(1)
    rows = np.arange(n)
    res = {k: [0, 0] for k in ['cur', 'sum', 'sum_ref', 'w9']}
    for _ in range(keys):
        w = rng.integers(0, 9, size=n)
        vals = {k: [] for k in res}
        for g, f, s, cg, cf, cs in models:
            fp = rng.random()
            pg, pf, ps = cg[g[rows, w].sum()], cf[f[rows, w].sum()], cs[s[rows, w].sum()]
            vals['cur'].append(min(1, pg / .495, pf / .495, fp / .01))
            vals['sum'].append(min(1, ps / .99, fp / .01))
            vals['sum_ref'].append(min(1, ps / .495, pf / .495, fp / .01))
            vals['w9'].append(min(1, pg / .9, pf / .09, fp / .01))
        for k, v in vals.items():
            v = np.array(v)
            res[k][0] += (v <= .01).any()
            res[k][1] += (v <= .01).sum()
    for k, (a, b) in res.items():
        print(f"{k:8s} P(any clean<=0.01) {a/keys:.3f} per-model {b/keys/len(models):.4f}")

if __name__ == '__main__':
    main()
