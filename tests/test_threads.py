"""forgetlab.threads and forgetlab.thread_governor: the user's settings kept, torch's
spin-waiting default with the governor otherwise, and the governor's choice of threads from
injected load readings (pure: no timing)."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest
from conftest import needs_data, tiny_raw

from forgetlab import thread_governor, threads
from forgetlab.errors import ConfigError
from forgetlab.thread_governor import MAX_PATIENCE, UP_CHECKS, Pace, Reading, decide


@pytest.mark.parametrize(
    "env, load, expected",
    [
        ({}, 1.2, {}),  # governed: spin-waiting, the governor lowers the threads when shared
        ({"FORGETLAB_THREADS": "auto"}, 1.2, {}),
        ({"OMP_NUM_THREADS": "2"}, 0.0, {}),  # the user's count, alone: torch's wait policy
        ({"OMP_NUM_THREADS": "2"}, 1.2, {"OMP_WAIT_POLICY": "PASSIVE"}),  # ... shared
        ({"OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "ACTIVE"}, 1.2, {}),  # their own policy
        ({"MKL_NUM_THREADS": "2", "GOMP_SPINCOUNT": "1000"}, 1.2, {}),
        ({"FORGETLAB_THREADS": "torch"}, 1.2, {}),
        ({"FORGETLAB_THREADS": "passive"}, 0.0, {"OMP_WAIT_POLICY": "PASSIVE"}),
        (
            {"FORGETLAB_THREADS": "1"},
            0.0,
            {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"},
        ),
    ],
)
def test_the_choice_before_torch_loads(env, load, expected):
    environ = dict(env)
    assert threads.configure(environ, torch_loaded=False, load=lambda: load) == expected
    assert all(environ[k] == v for k, v in expected.items())


def test_nothing_once_torch_is_loaded():
    environ: dict[str, str] = {"OMP_NUM_THREADS": "2"}
    assert threads.configure(environ, torch_loaded=True, load=lambda: 2.0) == {}
    assert environ == {"OMP_NUM_THREADS": "2"}


@pytest.mark.parametrize(
    "env, on",
    [
        ({}, True),
        ({"FORGETLAB_THREADS": "auto"}, True),
        ({"FORGETLAB_THREADS": "fast"}, True),  # ignored (with a warning on import)
        ({"FORGETLAB_THREADS": "torch"}, False),
        ({"FORGETLAB_THREADS": "passive"}, False),
        ({"FORGETLAB_THREADS": "2"}, False),
        ({"OMP_NUM_THREADS": "2"}, False),
        ({"MKL_NUM_THREADS": "1"}, False),
    ],
)
def test_overrides_turn_the_governor_off(env, on):
    assert threads.governed(env) is on
    assert (threads.pacer(env) is not None) is (on and os.path.exists("/proc/stat"))


@pytest.mark.parametrize("value", ["fast", "0", "-2", "2.5"])
def test_run_and_validate_refuse_an_unknown_setting(value):
    with pytest.raises(ConfigError, match=f"FORGETLAB_THREADS='{value}'") as error:
        threads.check_setting({"FORGETLAB_THREADS": value})
    assert "\n" not in str(error.value)
    for good in ("", "auto", "torch", "PASSIVE", "3"):
        threads.check_setting({"FORGETLAB_THREADS": good})


def test_the_cli_and_the_api_refuse_an_unknown_setting(monkeypatch, capsys):
    import forgetlab
    from forgetlab.cli import main

    monkeypatch.setenv("FORGETLAB_THREADS", "fast")
    assert main(["validate", "configs/quickstart.yaml"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "FORGETLAB_THREADS='fast'" in err
    with pytest.raises(ConfigError, match="FORGETLAB_THREADS='fast'"):
        forgetlab.run("configs/quickstart.yaml")


# --- the governor's decision: 2 cores, a run that started with 2 threads -------------------


def looks(pace: Pace, loads: list[float], cores: int = 2) -> list[int]:
    """The threads after each look at other processes' `loads` (cores)."""
    out = []
    for load in loads:
        pace = decide(pace, load, cores)
        out.append(pace.threads)
    return out


def test_alone_keeps_the_start_threads():
    assert looks(Pace(start=2, threads=2), [0.0, 0.1, 0.3, 0.45, 0.0]) == [2] * 5


def test_another_busy_process_means_fewer_threads():
    assert looks(Pace(start=2, threads=2), [1.0]) == [1]  # another 2-thread run: a core each
    assert looks(Pace(start=2, threads=2), [0.7]) == [1]  # a one-thread process squeezed
    assert looks(Pace(start=2, threads=2), [1.9]) == [1]  # never below one
    assert looks(Pace(start=16, threads=16), [10.6], cores=16) == [5]  # what is left


def test_back_to_the_start_threads_when_the_machine_is_free_again():
    pace = Pace(start=2, threads=2)
    assert looks(pace, [1.0, 1.0, 0.0, 0.0, 0.0]) == [1, 1, 1, 2, 2]  # UP_CHECKS looks
    assert UP_CHECKS == 2


def test_hysteresis_between_the_thresholds():
    # 0.3-0.5 of a core used by others: neither lowered at 2 threads nor raised at 1
    assert looks(Pace(start=2, threads=2), [0.4] * 4) == [2] * 4
    assert looks(Pace(start=2, threads=1), [0.4] * 4) == [1] * 4
    # one free look among busy ones does not raise
    assert looks(Pace(start=2, threads=1), [0.0, 1.0, 0.0, 1.0, 0.1]) == [1] * 5


def test_a_raise_undone_at_once_makes_the_next_one_wait_longer():
    # a partner that pauses and resumes: each undone raise doubles the free looks needed
    pace = Pace(start=2, threads=1)
    trace = []
    for load in [0.0, 0.0, 1.0]:  # raised after 2 free looks, lowered at the next
        pace = decide(pace, load, 2)
        trace.append(pace.threads)
    assert trace == [1, 2, 1] and pace.patience == 2 * UP_CHECKS
    assert looks(pace, [0.0] * 4) == [1, 1, 1, 2]
    for _ in range(10):  # raised and undone again and again: capped
        pace = decide(replace(pace, threads=2, since_raise=0), 1.0, 2)
    assert pace.threads == 1 and pace.patience == MAX_PATIENCE


def test_a_lasting_raise_keeps_the_patience():
    pace = Pace(start=2, threads=1)
    for load in [0.0, 0.0] + [0.0] * 10 + [1.0]:  # a partner started long after the raise
        pace = decide(pace, load, 2)
    assert pace.threads == 1 and pace.patience == UP_CHECKS


def test_other_cores_subtract_this_process():
    before = Reading(machine=1000, busy=300, own=200, at=0.0)
    after = Reading(machine=1200, busy=480, own=300, at=1.0)  # 200 jiffies over 2 CPUs
    assert thread_governor.other_cores(before, after, 2) == pytest.approx(0.8)
    assert thread_governor.other_cores(before, before, 2) is None
    alone = Reading(machine=1200, busy=390, own=300, at=1.0)  # rounding: never below 0
    assert thread_governor.other_cores(before, alone, 2) == 0.0


def test_a_governor_follows_injected_readings(monkeypatch, caplog):
    """Governor.tick: the baseline, the thread change, at most one look per interval and
    the user's own torch.set_num_threads adopted as the new start."""
    import torch

    readings = iter([Reading(1200, 500, 100, 1.0), Reading(1400, 600, 200, 2.0)])
    monkeypatch.setattr(thread_governor, "read", lambda cpus: next(readings))
    clock = iter([10.0, 10.5, 11.1])
    monkeypatch.setattr(thread_governor.time, "monotonic", lambda: next(clock))
    threads_now = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        gov = thread_governor.Governor([0, 1], baseline=Reading(1000, 200, 0, 0.0))
        with caplog.at_level("DEBUG", logger="forgetlab"):
            gov.tick()  # vs the baseline: others used 2 * (300 - 100) / 200 = 2 cores
        assert torch.get_num_threads() == 1 and gov.pace == Pace(2, 1)
        assert [r.getMessage() for r in caplog.records] == [
            "torch threads 2 -> 1: other processes use 2.0 of 2 cores"
        ]
        gov.tick()  # within the interval: no look
        torch.set_num_threads(2)  # the user's own choice
        gov.tick()  # others 2 * (100 - 100) / 200 = 0: their 2 is the start, kept
        assert torch.get_num_threads() == 2 and gov.pace.start == 2
    finally:
        torch.set_num_threads(threads_now)


def test_readings_of_this_machine():
    cpus = thread_governor.own_cpus()
    first = thread_governor.read(cpus)
    if first is None:
        pytest.skip("no /proc here")
    sum(i * i for i in range(200_000))  # some CPU time of our own
    second = thread_governor.read(cpus)
    assert second.machine >= first.machine and second.own >= first.own
    load = threads.other_load(0.05)
    assert 0.0 <= load <= len(cpus) + 1e-9


@needs_data
def test_training_on_the_cpu_asks_the_governor_before_every_micro_batch(tmp_path, monkeypatch):
    import torch

    from forgetlab import load_config, run
    from forgetlab.recipe import train

    governor_tick = threads.pacer({})  # the real governor, whatever this process's settings
    if governor_tick is None:
        pytest.skip("no /proc here")
    calls: list[int] = []

    def tick() -> None:
        calls.append(1)
        governor_tick()

    monkeypatch.setattr(train, "pacer", lambda: tick)
    threads_before = torch.get_num_threads()
    try:
        raw = tiny_raw(tmp_path / "run", tasks=("rte",), epochs=1)  # 48 examples: 3 batches
        run(load_config(raw=raw))
    finally:
        torch.set_num_threads(threads_before)  # the governor may have lowered them
    assert len(calls) == 3
