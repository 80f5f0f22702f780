"""forgetlab's CPU thread settings: what the user chose, and the wait policy before torch loads.

torch's OpenMP threads spin-wait between parallel regions by default. Alone that is the
fastest choice; with more busy torch threads than cores (two runs at once, the test suite
beside a run) the spinning threads take each other's cores and every process collapses.
Measured by benchmarks/shared_cpu.py (docs/benchmarks.md), MiniLM LoRA on 2 cores,
examples/s per process, the runs of a setting started together, 2026-12-02, run alone on the
machine:

    concurrent runs   torch defaults (spin)   always passive   forgetlab (governor)
    1                 240.8                   144.0            236.7
    2                 29.5                    179.3            177.5
    3                 18.8                    98.1             120.4

A passive wait policy avoids the collapse but costs speed alone; one thread per process has
no barrier to wait at, and torch's thread count, unlike the wait policy, can change while a
run goes. So by default (FORGETLAB_THREADS unset or `auto`, and no OMP_NUM_THREADS /
MKL_NUM_THREADS of the user's) forgetlab keeps torch's spin-waiting default and, while a
stage trains on the CPU, fits the thread count to the cores other processes leave
(forgetlab.thread_governor). The choice is read on `import forgetlab`, before torch loads
(OpenMP reads its settings then).

Overrides, each of which turns the governor off:
- FORGETLAB_THREADS=torch: torch's defaults, nothing changed;
- FORGETLAB_THREADS=passive: OMP_WAIT_POLICY=PASSIVE, torch's thread count;
- FORGETLAB_THREADS=N: N threads (OMP_NUM_THREADS, MKL_NUM_THREADS) waiting passively;
- the user's own OMP_NUM_THREADS or MKL_NUM_THREADS: that thread count; then, as before,
  the passive policy when other processes hold at least half a core at import.
Sweep workers of one thread (OMP_NUM_THREADS=1, set by forgetlab.sweeps.workers) and Ray's
trial tasks are therefore not governed, nor are data-parallel ranks (train_stage governs a
single process only); a sweep worker of several threads is, capped at its share. A user's
OMP_WAIT_POLICY (or GOMP_SPINCOUNT) is always kept.
`torch.set_num_threads(k)` before a run makes k the most the governor uses. Any other
FORGETLAB_THREADS value is ignored on import with one warning line (an error there would
make the package unimportable over a speed setting); `forgetlab run`, `validate` and `sweep`
and `forgetlab.run` refuse it (`check_setting`).

With the governor the thread count may change during a run when other processes start or
stop, and CPU reductions may then differ in the last bits: pin the threads
(FORGETLAB_THREADS=N) for bitwise-repeatable runs on a shared machine.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Mapping, MutableMapping

from forgetlab import thread_governor
from forgetlab.errors import ConfigError

ENV = "FORGETLAB_THREADS"
BUSY_CORES = 0.5  # other processes' CPU use, in cores, from which the machine counts as shared
USER_COUNTS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _value(environ: Mapping[str, str]) -> str:
    return environ.get(ENV, "").strip().lower()


def _valid(choice: str) -> bool:
    return choice in ("", "auto", "torch", "passive") or (choice.isdigit() and int(choice) > 0)


def _bad_value_message(environ: Mapping[str, str]) -> str:
    return f"{ENV}={environ[ENV]!r} is not auto, torch, passive or a number of threads (>= 1)"


def choice(environ: Mapping[str, str] = os.environ) -> str:
    """auto, torch, passive or a number of threads; an invalid value counts as auto."""
    value = _value(environ)
    return value if _valid(value) and value else "auto"


def governed(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the governor fits the threads to the machine: only when the user chose no
    thread setting of their own."""
    return choice(environ) == "auto" and not any(k in environ for k in USER_COUNTS)


def check_setting(environ: Mapping[str, str] = os.environ) -> None:
    """ConfigError (one line) for a FORGETLAB_THREADS value that import only warned about."""
    if not _valid(_value(environ)):
        raise ConfigError(_bad_value_message(environ) + " (unset it for the automatic choice)")


def configure(
    environ: MutableMapping[str, str] = os.environ,
    torch_loaded: bool | None = None,
    load: Callable[[], float] | None = None,
) -> dict[str, str]:
    """Set forgetlab's thread settings in `environ` unless the user chose their own; returns
    what was set. Too late once torch is imported (OpenMP has read its settings): then it
    sets nothing. `torch_loaded` and `load` (other processes' CPU use) are measured here
    unless given. Governed: nothing to set, only the governor's first reading to take."""
    if not _valid(_value(environ)):
        print(f"forgetlab: warning: {_bad_value_message(environ)}; ignored", file=sys.stderr)
    chosen_value = choice(environ)
    if governed(environ):
        thread_governor.mark_baseline()
        return {}
    if torch_loaded is None:
        torch_loaded = "torch" in sys.modules
    if chosen_value == "torch" or torch_loaded:
        return {}
    chosen: dict[str, str] = {}
    if chosen_value.isdigit():
        chosen["OMP_NUM_THREADS"] = chosen["MKL_NUM_THREADS"] = chosen_value
    own = "OMP_WAIT_POLICY" in environ or "GOMP_SPINCOUNT" in environ
    shared = lambda: (load or other_load)() >= BUSY_CORES  # noqa: E731 - measured only if needed
    if not own and (chosen or chosen_value == "passive" or shared()):
        chosen["OMP_WAIT_POLICY"] = "PASSIVE"
    environ.update(chosen)
    return chosen


def pacer(environ: Mapping[str, str] = os.environ) -> Callable[[], None] | None:
    """The governor's `tick` for a training loop on the CPU; None when the user chose the
    threads (or /proc cannot be read)."""
    if not governed(environ) or thread_governor.read(thread_governor.own_cpus()) is None:
        return None
    return thread_governor.governor().tick


def other_load(seconds: float = 0.1) -> float:
    """Cores kept busy by other processes, measured over `seconds` while this one sleeps; 0
    where /proc cannot be read (not Linux)."""
    cpus = thread_governor.own_cpus()
    before = thread_governor.read(cpus)
    time.sleep(seconds)
    after = thread_governor.read(cpus)
    if before is None or after is None:
        return 0.0
    return thread_governor.other_cores(before, after, len(cpus)) or 0.0
