"""Bad input ends in one readable line and exit code 2, and nothing written is lost."""

from __future__ import annotations

import json

import pytest
import yaml

import forgetlab.recipe.train
from forgetlab.cli import main
from tests.conftest import needs_data, tiny_raw


def _run_cli(tmp_path, raw, *extra) -> int:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return main(["run", str(path), "--quiet", *extra])


def _one_line_error(capsys, *needles):
    err = capsys.readouterr().err.strip()
    assert err.startswith("forgetlab: error: "), err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err


@pytest.mark.parametrize(
    ("overrides", "needles"),
    [
        (["training.lr_rate=1"], ["unknown key config.training.lr_rate"]),
        (["method.name=magic"], ["unknown method 'magic'"]),
        (["training.epochs=many"], ["training.epochs must be a number"]),
        (["tasks=[]"], ["tasks is empty"]),
        (["tasks=[rte, nosuchtask]"], ["nosuchtask"]),
        (["data.dir=/nonexistent/data"], ["/nonexistent/data", "FORGETLAB_DATA"]),
        (["method.name=lora", "method.r=1000"], ["method.r=1000", "rank <= 384"]),
        (["method.name=lora", "method.target_modules=[nope]"], ["match no linear layer"]),
        (["model.name=/nonexistent/model"], ["could not load model"]),
    ],
)
@needs_data
def test_bad_input_is_one_clear_line(tmp_path, capsys, overrides, needles):
    raw = tiny_raw(tmp_path / "run", "full")
    assert _run_cli(tmp_path, raw, *overrides) == 2
    _one_line_error(capsys, *needles)


@needs_data
def test_missing_label_column(tmp_path, capsys):
    train = tmp_path / "train.csv"
    train.write_text("sentence,target\ngood film,1\nbad film,0\n")
    raw = tiny_raw(tmp_path / "run", "full")
    raw["tasks"] = [
        {
            "name": "mine",
            "type": "file",
            "train": str(train),
            "eval": str(train),
            "text_column": "sentence",
            "label_column": "label",
        }
    ]
    assert _run_cli(tmp_path, raw) == 2
    _one_line_error(capsys, "label", "target")


@needs_data
def test_unwritable_output_dir(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert _run_cli(tmp_path, tiny_raw(blocker / "run", "full")) == 2
    _one_line_error(capsys, "not writable")


@needs_data
def test_nan_loss_stops_with_a_message_and_keeps_finished_stages(tmp_path, capsys, monkeypatch):
    ops = forgetlab.recipe.train.KINDS["classification"]

    class Diverging:
        """The classification kind, except that stage 2's loss is NaN."""

        def __getattr__(self, name):
            return getattr(ops, name)

        @staticmethod
        def loss(model, task, batch):
            value = ops.loss(model, task, batch)
            return value * float("nan") if task == "sst2" else value

    monkeypatch.setitem(forgetlab.recipe.train.KINDS, "classification", Diverging())
    out = tmp_path / "run"
    assert _run_cli(tmp_path, tiny_raw(out, "lora")) == 2
    _one_line_error(capsys, "stage 2 (sst2)", "loss became nan", "--resume")
    state = json.loads((out / "seed-1" / "state.json").read_text())
    assert len(state["rows"]) == 2  # base and stage 1 are kept
    assert (out / "seed-1" / "checkpoints" / "stage-1-rte" / "heads.safetensors").is_file()


@needs_data
def test_seeds_shared_head_and_concat_pairs(tmp_path, capsys):
    """Two seeds aggregate to mean ± std ± CI; the shared head and concat encoding run."""
    raw = tiny_raw(tmp_path / "run", "lora", epochs=1)
    raw.update(seeds=[1, 2], heads="shared")
    raw["data"]["pair_encoding"] = "concat"
    assert _run_cli(tmp_path, raw) == 0
    summary = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert summary["seeds"] == [1, 2] and summary["heads"] == "shared"
    acc = summary["aggregate"]["acc"]
    per_seed = [summary["per_seed"][s]["acc"] for s in ("1", "2")]
    assert acc["n"] == 2 and acc["mean"] == pytest.approx(sum(per_seed) / 2)
    assert acc["ci95"] is not None
    assert "± " in capsys.readouterr().out
