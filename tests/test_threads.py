"""forgetlab.threads: passive OpenMP waiting on a shared CPU, torch's default alone, and the
user's own settings kept."""

from __future__ import annotations

import pytest

from forgetlab import threads


@pytest.mark.parametrize(
    "env, load, expected",
    [
        ({}, 0.0, {}),  # alone: torch's spin-waiting default is the fastest
        ({}, 1.2, {"OMP_WAIT_POLICY": "PASSIVE"}),  # another process holds a core
        ({"OMP_WAIT_POLICY": "ACTIVE"}, 1.2, {}),  # the user's own choice is kept
        ({"GOMP_SPINCOUNT": "1000"}, 1.2, {}),
        ({"FORGETLAB_THREADS": "torch"}, 1.2, {}),
        ({"FORGETLAB_THREADS": "passive"}, 0.0, {"OMP_WAIT_POLICY": "PASSIVE"}),
        (
            {"FORGETLAB_THREADS": "1"},
            0.0,
            {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"},
        ),
    ],
)
def test_the_choice(env, load, expected):
    environ = dict(env)
    assert threads.configure(environ, torch_loaded=False, load=lambda: load) == expected
    assert all(environ[k] == v for k, v in expected.items())


def test_nothing_once_torch_is_loaded():
    environ: dict[str, str] = {}
    assert threads.configure(environ, torch_loaded=True, load=lambda: 2.0) == {}
    assert environ == {}


def test_other_load_is_measured_in_cores():
    load = threads.other_load(0.05)
    assert 0.0 <= load <= (__import__("os").cpu_count() or 1) + 1e-9
