"""A finished encoder run with classification probes and source tasks is analysed with the
model the run itself trained: the run and the analyses build it through one builder
(`forgetlab.recipe.build.build_run_model`). Before they shared it, every analysis of such a
run stopped with "Unexpected key(s) in state_dict: trec.bias, trec.weight"."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from forgetlab.analyses.runs import open_run
from forgetlab.cli import main
from tests.conftest import needs_data, tiny_raw

pytestmark = needs_data


@pytest.fixture(scope="module")
def probed_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("probed")
    raw = tiny_raw(tmp / "run", "lora", epochs=1)
    raw["data"] = {"max_train_examples": 32, "max_eval_examples": 32}
    raw["model"]["max_length"] = 48
    raw["probes"] = ["trec"]
    raw["source_tasks"] = [{"name": "mrpc"}]
    raw["output"]["checkpoints"] = "all"
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["run", str(path), "--quiet"]) == 0
    return tmp / "run"


def test_every_analysis_runs_on_a_run_with_probes_and_source_tasks(probed_run, capsys):
    args = ["--examples", "16", "--quiet"]
    assert main(["analyze", str(probed_run), "--cka", "--spectrum", "--similarity", *args]) == 0
    for name in ("cka", "spectrum", "similarity"):
        assert (probed_run / "analyses" / f"{name}.json").is_file()
    capsys.readouterr()
    hessian = ["hessian", str(probed_run), "--stage", "1", "--examples", "16", "--iters", "3"]
    assert main([*hessian, "--json", "--quiet"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["analysis"] == "hessian" and result["params"]["stage"] == 1


def test_a_rebuilt_model_scores_as_the_run_scored(probed_run):
    """The model the analyses rebuild after the last stage holds the run's probe heads and
    weights: its trec probe head equals the one saved in the checkpoint."""
    run = open_run(probed_run, device="cpu")
    model = run.model_at(1, stage=2)
    assert {"rte", "sst2", "trec", "mrpc"} <= set(model.heads)
    from safetensors.torch import load_file

    saved = load_file(run.checkpoint(1, 2) / "heads.safetensors")
    assert torch.equal(model.heads["trec"].weight.detach().cpu(), saved["trec.weight"])
