"""How torch's CPU threads wait, chosen before torch loads.

torch's OpenMP threads spin-wait between parallel regions by default. Alone that is the
fastest choice; with more torch processes than cores (two runs at once, the test suite
beside a run) the spinning threads take each other's cores and every process collapses. A
passive wait policy makes a waiting thread sleep instead, which is what a shared machine
needs, but alone it costs speed. Measured by benchmarks/shared_cpu.py (docs/benchmarks.md),
MiniLM LoRA on 2 cores, examples/s per process:

    concurrent runs      torch defaults (spin)   passive
    1                    245                     150
    2                    47                      176
    3                    18                      105

So forgetlab looks before torch loads. It measures, over 0.1 s, how much of the CPU other
processes keep busy. When another process holds at least half a core, it chooses the passive
policy; otherwise it leaves torch's default. OpenMP reads its settings once, when torch's
library loads, so this runs on `import forgetlab`. A run that started alone keeps spinning
when another starts later; sweep workers always wait passively (forgetlab.sweeps.workers).

Overridable: a user's own OMP_WAIT_POLICY (or GOMP_SPINCOUNT) is kept;
FORGETLAB_THREADS=torch leaves torch's defaults alone, =passive always waits passively,
=N also sets N threads per process (and waits passively). Any other value is ignored with
one warning line on stderr: it is read on `import forgetlab`, where an error would make the
package unimportable over a speed setting.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, MutableMapping

ENV = "FORGETLAB_THREADS"
BUSY_CORES = 0.5  # other processes' CPU use, in cores, from which the machine counts as shared


def configure(
    environ: MutableMapping[str, str] = os.environ,
    torch_loaded: bool | None = None,
    load: Callable[[], float] | None = None,
) -> dict[str, str]:
    """Set forgetlab's thread settings in `environ` unless the user chose their own; returns
    what was set. Too late once torch is imported (OpenMP has read its settings): then it
    sets nothing. `torch_loaded` and `load` (other processes' CPU use) are measured here
    unless given."""
    choice = environ.get(ENV, "").strip().lower()
    if choice and choice not in ("torch", "passive") and not (choice.isdigit() and int(choice)):
        print(
            f"forgetlab: warning: {ENV}={environ[ENV]!r} is not torch, passive or a number of "
            "threads (>= 1); ignored",
            file=sys.stderr,
        )
        choice = ""
    if torch_loaded is None:
        torch_loaded = "torch" in sys.modules
    if choice == "torch" or torch_loaded:
        return {}
    chosen: dict[str, str] = {}
    if choice.isdigit() and int(choice) > 0:
        chosen["OMP_NUM_THREADS"] = chosen["MKL_NUM_THREADS"] = choice
    own = "OMP_WAIT_POLICY" in environ or "GOMP_SPINCOUNT" in environ
    shared = lambda: (load or other_load)() >= BUSY_CORES  # noqa: E731 - measured only if needed
    if not own and (chosen or choice == "passive" or shared()):
        chosen["OMP_WAIT_POLICY"] = "PASSIVE"
    environ.update(chosen)
    return chosen


def other_load(seconds: float = 0.1) -> float:
    """Cores kept busy by other processes, measured from /proc/stat over `seconds` while this
    one sleeps; 0 where /proc/stat cannot be read (not Linux)."""
    try:
        before = _cpu_times()
        time.sleep(seconds)
        after = _cpu_times()
    except (OSError, ValueError, IndexError):
        return 0.0
    total = after[0] - before[0]
    idle = after[1] - before[1]
    cores = os.cpu_count() or 1
    return cores * (total - idle) / total if total > 0 else 0.0


def _cpu_times() -> tuple[int, int]:
    """(all jiffies, idle + iowait jiffies) of the machine, from the first line of /proc/stat."""
    with open("/proc/stat", encoding="ascii") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    return sum(fields[:8]), fields[3] + fields[4]
