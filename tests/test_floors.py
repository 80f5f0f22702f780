"""pyproject.toml's lower bounds for transformers, PEFT and Accelerate are the versions the
whole suite was run on as floors (.ci/floors.txt, run by .ci/run-floors): a bound moved
without that run, or a floors file edited without the bound, fails here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_declared_floors_are_the_tested_ones():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    tested = {}
    for line in (ROOT / ".ci" / "floors.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            tested[name.strip()] = version.strip()
    assert set(tested) == {"transformers", "peft", "accelerate"}
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    declared = {}
    for dep in deps:
        if m := re.fullmatch(r"([A-Za-z0-9_.-]+)(\[[^\]]*\])?>=([0-9.]+)", dep.replace(" ", "")):
            declared[m.group(1)] = m.group(3)
    for name, version in tested.items():
        # "5.0" declares what "5.0.0" tested
        bound = declared[name].split(".")
        assert bound == version.split(".")[: len(bound)], (name, declared[name], version)
