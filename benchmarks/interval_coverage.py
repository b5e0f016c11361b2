"""Coverage of three 95 % intervals of a KD difference's mean when training seeds vary (the choice behind
:func:`medkd.stats.recipe_interval`).

Simulates the design of a medkd experiment: S seeds x C test cases of paired differences
``d[s, c] = mu + a_s + b_c + e_sc`` with independent normal seed, case and residual effects, and counts how
often each interval contains ``mu``:

* ``t (seeds+cases)``: medkd's interval, a t interval from the two-way random-effects mean squares with
  Satterthwaite degrees of freedom (:func:`medkd.stats.recipe_interval`);
* ``pigeonhole bootstrap``: seeds and cases resampled independently with replacement, percentile interval
  (Owen, "The pigeonhole bootstrap", Ann. Appl. Stat. 1(2), 2007);
* ``case bootstrap``: cases resampled with their seeds fixed, percentile interval (the interval medkd reported
  before; :func:`medkd.stats.case_bootstrap`).

Usage: ``python benchmarks/interval_coverage.py [--runs 400] [--seeds 3 5 10] [--cases 24]``. Prints one line
per (seeds, seed SD) with the three coverages. Seeded: the same figures every time.
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from medkd.stats import case_bootstrap, recipe_interval


def pigeonhole(block: np.ndarray, rng: np.random.Generator, resamples: int = 1999, confidence: float = 0.95):
    """Percentile interval of the block mean, seeds (rows) and cases (columns) resampled independently."""
    n_s, n_c = block.shape
    ws = rng.multinomial(n_s, np.full(n_s, 1 / n_s), size=resamples).astype(float)
    wc = rng.multinomial(n_c, np.full(n_c, 1 / n_c), size=resamples).astype(float)
    means = np.einsum("bs,sc,bc->b", ws, block, wc) / (n_s * n_c)
    tail = (1 - confidence) / 2
    return np.quantile(means, [tail, 1 - tail])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=400)
    ap.add_argument("--seeds", type=int, nargs="+", default=[3, 5, 10])
    ap.add_argument("--cases", type=int, default=24)
    ap.add_argument("--case-sd", type=float, default=0.05)
    ap.add_argument("--residual-sd", type=float, default=0.02)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    print(f"coverage of 95 % intervals of the mean difference (mu = 0), {args.runs} runs, {args.cases} cases, "
          f"case SD {args.case_sd}, residual SD {args.residual_sd}")
    print(f"{'seeds':>5} {'seed SD':>7} {'t (seeds+cases)':>16} {'pigeonhole':>10} {'case bootstrap':>14}")
    for n_seeds in args.seeds:
        for seed_sd in (0.0, 0.05):
            hits = np.zeros(3)
            for i in range(args.runs):
                block = (rng.normal(0, seed_sd, (n_seeds, 1)) + rng.normal(0, args.case_sd, (1, args.cases))
                         + rng.normal(0, args.residual_sd, (n_seeds, args.cases)))
                diffs = pd.DataFrame({"seed": np.repeat(np.arange(n_seeds), args.cases),
                                      "case": np.tile(np.arange(args.cases), n_seeds), "diff": block.ravel()})
                rec = recipe_interval(diffs)
                lo_p, hi_p = pigeonhole(block, rng)
                ci = case_bootstrap(diffs["case"], diffs["diff"], n_resamples=1999, seed=i).confidence_interval
                hits += [rec.low <= 0 <= rec.high, lo_p <= 0 <= hi_p, ci.low <= 0 <= ci.high]
            cov = hits / args.runs
            print(f"{n_seeds:>5} {seed_sd:>7} {cov[0]:>16.3f} {cov[1]:>10.3f} {cov[2]:>14.3f}")


if __name__ == "__main__":
    main()
