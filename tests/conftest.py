"""Shared fixtures: tiny configs on the packaged MiniLM and the shipped data."""

from __future__ import annotations

import os

# Under pytest-xdist (the README's `-n 2`) each worker runs one torch thread, pinned: two
# workers on 2 cores then neither oversubscribe them nor let the thread governor change a
# count mid-test (which can move the last bits of a CPU reduction that a test compares).
# Set before forgetlab is imported: its thread choice is read on import. Subprocesses that
# tests start inherit it.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("FORGETLAB_THREADS", "1")

import pytest  # noqa: E402

from forgetlab.tasks.registry import default_data_dir  # noqa: E402


def _data_dir():
    try:
        return default_data_dir()
    except Exception:  # noqa: BLE001 - any failure means "no shipped data here"
        return None


DATA_DIR = _data_dir()
needs_data = pytest.mark.skipif(
    DATA_DIR is None or not (DATA_DIR / "glue").is_dir(),
    reason="shipped data not found (set FORGETLAB_DATA or place it at ../shared/data)",
)


def tiny_raw(out_dir, method: str = "lora", tasks=("rte", "sst2"), **training) -> dict:
    """A config small enough to train in seconds on 2 CPU cores."""
    lr = 2e-3 if method == "lora" else 1e-4
    return {
        "name": f"tiny-{method}",
        "tasks": list(tasks),
        "model": {"max_length": 64},
        "data": {"max_train_examples": 48, "max_eval_examples": 48},
        "method": {"name": method},
        "training": {
            "lr": lr,
            "epochs": 2,
            "batch_size": 16,
            "log_every": 1,
            "progress_bar": False,
            **training,
        },
        "output": {"dir": str(out_dir), "store": str(out_dir.parent / "store.sqlite")},
    }


def tiny_sweep_raw(out_dir, lrs) -> dict:
    """A sweep over `lrs` (training.lr) of 2-step stages on 16 examples, two seeds a trial,
    heartbeats every second; its store beside the sweep directory."""
    return {
        "name": "tiny",
        "tasks": ["rte", "sst2"],
        "model": {"max_length": 32},
        "data": {"max_train_examples": 16, "max_eval_examples": 16},
        "method": {"name": "lora"},
        "training": {"epochs": 1, "batch_size": 8, "max_steps": 2, "progress_bar": False},
        "output": {"dir": str(out_dir), "store": str(out_dir.parent / "store.sqlite"),
                   "checkpoints": "last"},
        "sweep": {"space": {"training.lr": list(lrs)}, "seeds": [1, 2], "heartbeat_s": 1},
    }  # fmt: skip


def interrupt_at_stage(monkeypatch, raw: dict, stage: int) -> None:
    """Run the config `raw` until `stage` starts, then stop it as Ctrl-C would: the stages
    before it are finished (their rows and checkpoints written), what --resume continues."""
    from forgetlab import load_config, run
    from forgetlab.recipe import run as runner

    real = runner.train_stage

    def interrupted(*args, **kwargs):
        if kwargs["stage"] == stage:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(runner, "train_stage", interrupted)
        with pytest.raises(KeyboardInterrupt):
            run(load_config(raw=raw))


def one_torch_thread():
    """Run a module's tests on one torch thread, then restore the setting: on these 2 shared
    cores, 2 OpenMP threads under load make small SVDs and matmuls 10-200x slower than 1
    (measured). Use as `yield from one_torch_thread()` in a module-scoped autouse fixture."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
