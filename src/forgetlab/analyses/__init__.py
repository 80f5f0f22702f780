"""Analyses of finished runs: where the model changed, how much, and how sharp its loss is.

Each analysis is one module with NAME, DEFAULTS (its options), `check(run, seed, params)`
(raises before anything is computed) and `compute(run, seed, params) -> dict`; it is
registered below with one line. `run_analyses` caches every result in
<run>/analyses/<name>.json and in the results store, and recomputes only when asked (`force`)
or when the options differ from the cached ones.
"""

from forgetlab.analyses import curvature, diversity, drift, task_similarity, update_rank
from forgetlab.analyses.cache import analyze

# name -> module; `forgetlab analyze` runs these (the Hessian has its own command)
ANALYSES = {m.NAME: m for m in (drift, update_rank, task_similarity, diversity)}
HESSIAN = curvature

__all__ = ["ANALYSES", "HESSIAN", "analyze"]
