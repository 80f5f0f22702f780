"""`freeze` with its frozen layers in eval mode (`frozen_dropout: false`) and their output
cached per example (`cache_frozen: true`): the cache changes no number, computes each
example's frozen part once, steps aside for calls it cannot serve, and empties itself when a
frozen weight is written.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

import forgetlab
from forgetlab import load_config
from forgetlab.cli import main
from forgetlab.errors import ConfigError
from forgetlab.kinds import KINDS
from forgetlab.methods import get_method, method_config
from forgetlab.methods.frozen_bottom import FrozenBottomCache
from forgetlab.models import load_tokenizer
from forgetlab.models.causal_model import CausalTaskModel
from forgetlab.recipe.build import build_model
from forgetlab.recipe.prepare import prepare_tasks
from tests.conftest import needs_data, one_torch_thread, tiny_raw

pytestmark = needs_data

EVAL_MODE = {"name": "freeze", "num_trainable_layers": 1, "frozen_dropout": False}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    yield from one_torch_thread()


def _raw(out: Path, method: dict) -> dict:
    raw = tiny_raw(out, "full", tasks=("rte", "sst2"), epochs=2, batch_size=8)
    raw["model"]["max_length"] = 32
    raw["data"] = {"max_train_examples": 16, "max_eval_examples": 16}
    raw["method"] = dict(method)
    return raw


def test_the_cache_changes_no_number(tmp_path, capsys):
    """Same config but the cache flag: the same matrices and loss curves (the cached run
    from the CLI, the other from the API); the CLI prints evaluation's share of the time."""
    off = forgetlab.run(load_config(raw=_raw(tmp_path / "off", EVAL_MODE))).metrics
    raw = _raw(tmp_path / "on", EVAL_MODE)
    path = tmp_path / "on.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["run", str(path), "--quiet", "method.cache_frozen=true"]) == 0
    on = json.loads((tmp_path / "on" / "metrics.json").read_text())
    timing = on["per_seed"]["1"]["timing"]
    share = round(100 * timing["eval_s"] / timing["train_s"])
    assert timing["eval_s"] > 0 and f"= {share}% of training time" in capsys.readouterr().out
    saved = yaml.safe_load((tmp_path / "on" / "config.yaml").read_text())
    assert saved["method"]["cache_frozen"] is True
    for a, b in zip(on["accuracy_matrix"], off["accuracy_matrix"], strict=True):
        assert a == pytest.approx(b, abs=1e-6)
    curves = [
        [p[1] for s in m["per_seed"]["1"]["stages"] for p in s["loss_curve"]] for m in (on, off)
    ]
    assert len(curves[0]) == 8 and curves[0] == pytest.approx(curves[1], abs=1e-5)


@pytest.fixture(scope="module")
def sst2():
    raw = _raw(Path("/nonexistent/run"), EVAL_MODE)
    raw["tasks"] = ["sst2"]
    cfg = load_config(raw=raw)
    tokenizer = load_tokenizer(cfg.model)
    return cfg, prepare_tasks(cfg, tokenizer), tokenizer.pad_token_id


def _model(sst2, **keys):
    cfg, tasks, pad_id = sst2
    mcfg = method_config({**EVAL_MODE, **keys})
    return build_model(cfg, tasks, get_method("freeze"), mcfg, seed=1, pad_id=pad_id)


def _batches(sst2, size: int):
    _, tasks, pad_id = sst2
    split = tasks[0].train
    ops = KINDS["classification"]
    return [ops.collate(split, idx, pad_id, "cpu") for idx in ops.eval_batches(split.lengths, size)]


def test_each_example_is_computed_once_and_training_steps_agree(sst2):
    cached, plain = _model(sst2, cache_frozen=True), _model(sst2)
    cache = cached.backbone.forward
    assert isinstance(cache, FrozenBottomCache)
    passes = [_batches(sst2, 5), _batches(sst2, 8), _batches(sst2, 16)]  # rows re-padded
    passes[0].pop(1)  # rows 5-9 unseen: the second pass fills them inside part-cached batches
    for number, (batches, counts) in enumerate(zip(passes, [(11, 0), (16, 11), (16, 27)])):
        for batch in batches:
            losses = []
            for model in (cached, plain):
                model.train()
                torch.manual_seed(number)  # the same dropout masks in the top layer and head
                loss = KINDS["classification"].loss(model, "sst2", batch)
                loss.backward()
                losses.append(loss.item())
            assert losses[0] == pytest.approx(losses[1], abs=1e-6)
        assert (cache.computed, cache.reused) == counts
    grads = [(p.grad, q.grad) for p, q in zip(cached.parameters(), plain.parameters())]
    assert all((a is None) == (b is None) for a, b in grads)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in grads if a is not None)


def test_other_calls_run_the_backbone_whole(sst2):
    model = _model(sst2, cache_frozen=True).eval()
    inputs = _batches(sst2, 16)[0]["inputs"]
    with torch.no_grad():
        out = model.backbone(**inputs, output_hidden_states=True)
    assert len(out.hidden_states) == 7 and model.backbone.forward.computed == 0
    # frozen_dropout: false holds in train mode too: the frozen part is deterministic
    model.train()
    with torch.no_grad():
        a, b = (model.backbone(**inputs, output_hidden_states=True).hidden_states[5] for _ in "ab")
    assert torch.equal(a, b)


def test_a_written_frozen_weight_empties_the_cache(sst2):
    model = _model(sst2, cache_frozen=True).eval()
    batch = _batches(sst2, 16)[0]["inputs"]
    with torch.no_grad():
        before = model("sst2", **batch)
        model.load_state_dict(model.state_dict())  # what a checkpoint load does
        model.backbone.embeddings.word_embeddings.weight.mul_(1.5)
        after = model("sst2", **batch)
    assert model.backbone.forward.computed == 32  # computed again, not served stale
    assert not torch.allclose(before, after)


@pytest.mark.parametrize(
    ("keys", "match"),
    [
        ({"cache_frozen": True, "frozen_dropout": True}, r"method\.cache_frozen=true needs"),
        ({"cache_frozen": True}, r"method\.cache_frozen=true needs"),  # dropout on by default
        ({"frozen_dropout": "no"}, r"method\.frozen_dropout"),
        ({"cache_frozen": 1}, r"method\.cache_frozen"),
    ],
)
def test_bad_keys_name_the_key(keys, match):
    with pytest.raises(ConfigError, match=match):
        method_config({"name": "freeze", **keys})


def test_decoders_are_refused():
    backbone = nn.Module()
    backbone.layers = nn.ModuleList([nn.Linear(2, 2), nn.Linear(2, 2)])
    model = CausalTaskModel(backbone, hidden_size=2)
    cfg = method_config({"name": "freeze", "frozen_dropout": False, "cache_frozen": True})
    with pytest.raises(ConfigError, match="encoder models only"):
        get_method("freeze").prepare(model, cfg)
