#!/usr/bin/env python3
"""The design run of the centred-gap sum (tenth session): from a dawn_acceptance run's
`verify-scores.jsonl` (every verified model's probabilities on its marks), recompute the raw
log-gap sum, the reference-gap sum and the centred-gap sum (log-probabilities centred per
label on their mean over the marks, floored at FLOOR) with their exact null, without
retraining anything. Prints log10 p per row.

Usage: dawn_centred.py OUT/verify-scores.jsonl [FLOOR]   (FLOOR default 1e-6)
"""
import json
import math
import sys

import numpy as np

STEP, CAP = 0.125, 64


def qgaps(vals):
    best = max(vals)
    return [min(CAP, max(0, int(round((best - v) / STEP)))) for v in vals]


def lower_tail_log10(rows, s):
    """log10 P(S <= s), S the sum of one uniform draw from each row (exact convolution)."""
    if s >= sum(max(r) for r in rows):
        return 0.0
    dist = np.zeros(s + 1)
    dist[0] = 1.0
    ln_scale = 0.0
    for r in rows:
        nxt = np.zeros(s + 1)
        for v in r:
            if v <= s:
                nxt[v:] += dist[: s + 1 - v] / len(r)
        m = nxt.max()
        if m <= 0:
            return -math.inf
        ln_scale += math.log(m)
        dist = nxt / m
    return min(0.0, ln_scale + math.log(dist.sum())) / math.log(10)


def gap_sum(rows, marks):
    return lower_tail_log10(rows, sum(r[i] for r, i in zip(rows, marks)))


def main():
    path = sys.argv[1]
    floor = float(sys.argv[2]) if len(sys.argv) > 2 else 1e-6
    for line in open(path):
        d = json.loads(line)
        p = np.array(d["probs"], dtype=np.float64)
        q = np.array(d["reference"], dtype=np.float64)
        lp = np.log(np.where(p > 0, p, 1e-300))
        lift = np.log(np.maximum(p, 1e-3)) - np.log(np.maximum(q, 1e-3))
        lc = np.log(np.maximum(p, floor))
        lc = lc - lc.mean(0)
        raw, ref, cen, marks = [], [], [], []
        for k, (y, w) in enumerate(zip(d["true"], d["given"])):
            others = [j for j in range(p.shape[1]) if j != y]
            raw.append(qgaps([lp[k, j] for j in others]))
            ref.append(qgaps([lift[k, j] for j in others]))
            cen.append(qgaps([lc[k, j] for j in others]))
            marks.append(others.index(w))
        print(
            f"{d['row']:45s} {len(marks):4d} marks  raw {gap_sum(raw, marks):8.2f}  "
            f"ref {gap_sum(ref, marks):8.2f}  centred {gap_sum(cen, marks):8.2f}"
        )


if __name__ == "__main__":
    main()
