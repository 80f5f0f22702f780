"""How torch's CPU threads wait, chosen before torch loads.

torch's OpenMP threads spin-wait between parallel regions by default. Alone that is free;
with more torch processes than cores (two runs at once, sweep workers, the test suite beside a
run) the spinning threads take each other's cores: one MiniLM step took 7.69 s instead of
0.82 s with three 2-thread processes on 2 cores (see docs/benchmarks.md). A passive wait
policy makes a waiting thread sleep instead. OpenMP reads its settings once, when torch's
library loads, so this runs on `import forgetlab`, before anything imports torch.

Overridable: a user's own OMP_WAIT_POLICY (or GOMP_SPINCOUNT) is kept; FORGETLAB_THREADS=torch
leaves torch's defaults alone; FORGETLAB_THREADS=N also sets N threads per process.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping

ENV = "FORGETLAB_THREADS"


def configure(environ: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """Set forgetlab's thread settings in `environ` unless the user chose their own; returns
    what was set. Too late once torch is imported (OpenMP has read its settings): then it
    sets nothing."""
    choice = environ.get(ENV, "").strip().lower()
    if choice == "torch" or "torch" in sys.modules:
        return {}
    chosen: dict[str, str] = {}
    if "OMP_WAIT_POLICY" not in environ and "GOMP_SPINCOUNT" not in environ:
        chosen["OMP_WAIT_POLICY"] = "PASSIVE"
    if choice.isdigit() and int(choice) > 0:
        chosen["OMP_NUM_THREADS"] = choice
        chosen["MKL_NUM_THREADS"] = choice
    environ.update(chosen)
    return chosen
