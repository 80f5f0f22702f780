"""The golden check of the house refactor: `forgetlab run` of a small config writes the same
metrics.json numbers as the code did before the refactor (tests/golden/golden_metrics.json,
written by that code), within float tolerance. Timings are left out: they are not results."""

from __future__ import annotations

import json
import math
from pathlib import Path

from forgetlab.cli import main
from tests.conftest import needs_data

pytestmark = needs_data

GOLDEN = Path(__file__).parent / "golden"
TIMINGS = {"wall_s", "examples_per_s", "tokens_per_s", "train_s", "eval_s", "timing"}


def numbers(value, path="") -> dict[str, object]:
    """Every leaf of a metrics.json as {dotted path: value}, timings left out."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if k not in TIMINGS:
                out.update(numbers(v, f"{path}.{k}" if path else str(k)))
        return out
    if isinstance(value, list):
        out = {}
        for i, v in enumerate(value):
            out.update(numbers(v, f"{path}[{i}]"))
        return out
    return {path: value}


def same(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        if a is None or b is None:
            return a is b
        if math.isnan(a) and math.isnan(b):
            return True
        return math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-5)
    return a == b


def test_golden_metrics_unchanged(tmp_path):
    out = tmp_path / "golden"
    assert main(["run", str(GOLDEN / "golden.yaml"), "--out", str(out), "--quiet"]) == 0
    golden = json.loads((GOLDEN / "golden_metrics.json").read_text())
    for variant, expected in golden.items():
        got = numbers(json.loads((out / variant / "metrics.json").read_text()))
        want = numbers(expected)
        assert set(got) == set(want), f"{variant}: keys differ: {set(got) ^ set(want)}"
        wrong = [k for k in want if not same(got[k], want[k])]
        assert not wrong, f"{variant}: {[(k, want[k], got[k]) for k in wrong[:5]]}"
