"""Torch's CPU threads during training, fitted to the cores other processes leave.

With more busy threads than cores, OpenMP's threads wait for each other at every parallel
region's barrier while their cores run another process: two or three torch processes on 2
cores each train an order of magnitude slower than alone (docs/benchmarks.md). With one
thread there is no barrier to wait at. So while a stage trains on the CPU, `Governor.tick`
(called by recipe/train.py before every micro-batch) looks, at most once a second of wall
time, at how much CPU other processes used since its last look: the non-idle jiffies of this
process's CPUs (/proc/stat) minus this process's own (/proc/self/stat). Two file reads, no
waiting. It then sets torch's threads to the cores they leave, at least 1 and at most the
count the run started with (`decide`, pure):

- fewer threads as soon as the free cores fall half a core below the threads;
- more again (up to the start count) only after `UP_CHECKS` looks in a row with room for
  another thread (the free cores within a quarter core of it); a raise undone at the next
  looks doubles the looks needed (up to `MAX_PATIENCE`), so two runs that keep taking the
  same spare core do not flap.

The first look of a process compares with a reading taken on `import forgetlab`
(`mark_baseline`), so runs started together already see each other's loading at their
first step. Which processes are governed (the overrides) is forgetlab.threads' choice.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Collection
from dataclasses import dataclass, replace

log = logging.getLogger("forgetlab")

INTERVAL_S = 1.0  # wall time between two looks
STALE_S = 60.0  # a longer gap (an import long ago, a long evaluation) only restarts the count
DOWN_MARGIN = 0.5  # fewer threads once the free cores are this far below the threads
UP_MARGIN = 0.25  # another thread once the free cores are this close to threads + 1
UP_CHECKS = 2  # looks in a row with room before a raise
UNDONE_WITHIN = 3  # a raise lowered again within this many looks did not find a free core
MAX_PATIENCE = 32


@dataclass(frozen=True)
class Reading:
    """CPU time so far, in jiffies: all of this process's CPUs, their non-idle part, and this
    process's own (all its threads, user + system)."""

    machine: int
    busy: int
    own: int
    at: float  # time.monotonic()


def own_cpus() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return list(range(os.cpu_count() or 1))


def read(cpus: Collection[int]) -> Reading | None:
    """A reading over `cpus`; None where /proc cannot be read (not Linux)."""
    wanted = {f"cpu{c}" for c in cpus}
    machine = busy = 0
    try:
        with open("/proc/stat", encoding="ascii") as f:
            for line in f:
                name, *values = line.split()
                if name not in wanted:
                    continue
                fields = [int(v) for v in values[:8]]  # guest time is inside user time
                machine += sum(fields)
                busy += sum(fields) - fields[3] - fields[4]  # idle, iowait
        with open("/proc/self/stat", encoding="ascii") as f:
            # after the command name's closing parenthesis: utime and stime are the 12th and
            # 13th fields (fields 14 and 15 of proc(5))
            own_fields = f.read().rsplit(")", 1)[1].split()
        own = int(own_fields[11]) + int(own_fields[12])
    except (OSError, ValueError, IndexError):
        return None
    return Reading(machine, busy, own, time.monotonic()) if machine else None


def other_cores(before: Reading, after: Reading, n_cpus: int) -> float | None:
    """Cores other processes kept busy between two readings over `n_cpus` CPUs; None when no
    time passed on the clock of /proc/stat."""
    elapsed = after.machine - before.machine
    if elapsed <= 0:
        return None
    others = (after.busy - before.busy) - (after.own - before.own)
    return max(0.0, n_cpus * others / elapsed)


@dataclass(frozen=True)
class Pace:
    """The governor's state between two looks."""

    start: int  # threads the run had: the most the governor sets
    threads: int  # threads now
    room: int = 0  # looks in a row that had room for another thread
    patience: int = UP_CHECKS  # looks with room needed before a raise
    since_raise: int | None = None  # looks since the last raise (None: none pending)


def decide(pace: Pace, others: float, cores: int) -> Pace:
    """The next state after one look: other processes used `others` of `cores` cores."""
    free = cores - others
    since = None if pace.since_raise is None else pace.since_raise + 1
    if pace.threads > 1 and free < pace.threads - DOWN_MARGIN:
        fewer = max(1, min(pace.threads - 1, math.floor(free + 0.5)))
        undone = since is not None and since <= UNDONE_WITHIN
        patience = min(2 * pace.patience, MAX_PATIENCE) if undone else pace.patience
        return replace(pace, threads=fewer, room=0, patience=patience, since_raise=None)
    if pace.threads < pace.start and free >= pace.threads + 1 - UP_MARGIN:
        if pace.room + 1 >= pace.patience:
            more = min(pace.start, math.floor(free + UP_MARGIN))
            return replace(pace, threads=more, room=0, since_raise=0)
        return replace(pace, room=pace.room + 1, since_raise=since)
    return replace(pace, room=0, since_raise=since)


class Governor:
    """Looks at most every `INTERVAL_S` and sets torch's threads by `decide`. A thread count
    set by someone else since its last look (`torch.set_num_threads`) becomes its new start."""

    def __init__(self, cpus: Collection[int], baseline: Reading | None = None) -> None:
        self.cpus = list(cpus)
        self.last = baseline
        self.pace: Pace | None = None
        self.next_at = 0.0

    def tick(self) -> None:
        now = time.monotonic()
        if now < self.next_at:
            return
        self.next_at = now + INTERVAL_S
        reading = read(self.cpus)
        if reading is None:
            return
        before, self.last = self.last, reading
        import torch  # loaded by now: this runs inside training

        threads = torch.get_num_threads()
        if self.pace is None or threads != self.pace.threads:
            self.pace = Pace(start=threads, threads=threads)
        if before is None or reading.at - before.at > STALE_S:
            return
        others = other_cores(before, reading, len(self.cpus))
        if others is None:
            return
        pace = decide(self.pace, others, len(self.cpus))
        if pace.threads != self.pace.threads:
            torch.set_num_threads(pace.threads)
            log.debug(
                "torch threads %d -> %d: other processes use %.1f of %d cores",
                self.pace.threads,
                pace.threads,
                others,
                len(self.cpus),
            )
        self.pace = pace


_baseline: Reading | None = None
_governor: Governor | None = None


def mark_baseline() -> None:
    """Take the reading the first look compares with (on `import forgetlab`)."""
    global _baseline
    _baseline = read(own_cpus())


def governor() -> Governor:
    """This process's one governor: its state carries over from stage to stage."""
    global _governor
    if _governor is None:
        _governor = Governor(own_cpus(), _baseline)
    return _governor
