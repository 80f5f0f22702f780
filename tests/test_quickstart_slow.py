"""The shipped quickstart, at full size: both methods learn the tasks the README says they do.

Slow (about 8 minutes per method on 2 CPU cores): `python -m pytest -m slow`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from forgetlab import load_config, run
from tests.conftest import needs_data

QUICKSTART = Path(__file__).parent.parent / "configs" / "quickstart.yaml"


@pytest.mark.slow
@needs_data
@pytest.mark.parametrize(("method", "lr"), [("full", 5e-5), ("lora", 2e-3)])
def test_quickstart_learns_mrpc_and_sst2(tmp_path, method, lr):
    cfg = load_config(
        QUICKSTART,
        [
            f"method.name={method}",
            f"training.lr={lr}",
            f"output.dir={tmp_path / method}",
            f"output.store={tmp_path / 'store.sqlite'}",
            "training.progress_bar=false",
        ],
    )
    metrics = run(cfg).seed_metrics[1]
    learned = dict(zip(metrics["tasks"], (f["learned"] for f in metrics["learning"])))
    assert learned["mrpc"] and learned["sst2"], learned
    assert metrics["initial_acc"] > sum(metrics["majority_baseline"]) / 4
