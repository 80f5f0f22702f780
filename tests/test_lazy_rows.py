"""LazyRowsAdamW (forgetlab.recipe.lazy_rows) gives torch's AdamW's numbers while updating
only the embedding rows looked up, and falls back where that would be wrong."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from forgetlab.recipe import lazy_rows
from forgetlab.recipe.lazy_rows import LazyRowsAdamW, lazy_tables
from tests.conftest import needs_data, tiny_raw


class Tiny(nn.Module):
    def __init__(self, rows: int = 64, reads_table: bool = False) -> None:
        super().__init__()
        self.emb = nn.Embedding(rows, 8, padding_idx=0)
        self.out = nn.Linear(8, 3)
        self.reads_table = reads_table

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.out(self.emb(ids).mean(1))
        if self.reads_table:  # a model that uses every row, not only the ones looked up
            h = h + self.emb.weight.pow(2).mean()
        return h


# Batches that look up a few rows each; rows 40-63 are never looked up, row 9 first at step 4
BATCHES = [
    [[1, 2, 3], [4, 5, 0]],
    [[2, 6, 7], [1, 1, 8]],
    [[3, 3, 3], [5, 6, 2]],
    [[9, 2, 1], [0, 0, 9]],
]
LRS = [1e-2, 3e-2, 2e-2, 1e-2, 5e-3, 4e-3, 3e-3, 2e-3]


def train(model: nn.Module, lazy: bool, fused: bool, reads_extra: bool = False):
    groups = [
        {"params": [model.emb.weight, model.out.weight], "weight_decay": 0.1},
        {"params": [model.out.bias], "weight_decay": 0.0},
    ]
    if lazy:
        opt = LazyRowsAdamW(groups, [model.emb], lr=LRS[0], fused=fused)
    else:
        opt = torch.optim.AdamW(groups, lr=LRS[0], fused=fused)
    for step, lr in enumerate(LRS):
        for group in opt.param_groups:
            group["lr"] = lr
        ids = torch.tensor(BATCHES[step % len(BATCHES)])
        loss = model(ids).logsumexp(-1).mean()
        if reads_extra:  # two forwards before one backward (a strategy's replay batch)
            loss = loss + model(ids[:, :1] + 10).sum() * 0.1
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    if lazy:
        opt.close()
    return opt


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("reads_table", [False, True])
def test_same_weights_and_moments_as_adamw(fused, reads_table):
    torch.manual_seed(0)
    dense = Tiny(reads_table=reads_table)
    lazy = copy.deepcopy(dense)
    ref = train(dense, lazy=False, fused=fused, reads_extra=True)
    opt = train(lazy, lazy=True, fused=fused, reads_extra=True)
    for (name, a), b in zip(dense.named_parameters(), lazy.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7, msg=name)
    sa, sb = ref.state[dense.emb.weight], opt.state[lazy.emb.weight]
    torch.testing.assert_close(sb["exp_avg"], sa["exp_avg"], rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(sb["exp_avg_sq"], sa["exp_avg_sq"], rtol=1e-6, atol=1e-10)
    assert float(sb["step"]) == float(sa["step"]) == len(LRS)
    seen = opt._tables[id(lazy.emb.weight)].seen
    # lazy where it may be (rows 0-9, the replay batch's 10-15 and 19); every row dense once
    # the table is read outside its lookups
    assert int(seen.sum()) == (64 if reads_table else 17)


def test_unseen_rows_only_decay():
    torch.manual_seed(0)
    model = Tiny()
    before = model.emb.weight.detach().clone()
    train(model, lazy=True, fused=True)
    decay = torch.tensor([1 - lr * 0.1 for lr in LRS], dtype=torch.float64).prod()
    torch.testing.assert_close(model.emb.weight[40:], (before[40:] * decay).float())
    assert not torch.allclose(model.emb.weight[9], before[9] * decay.float())


def test_flush_makes_rows_exact_mid_training():
    """Read the weights between steps (evaluation during training): flushed, they are AdamW's."""
    torch.manual_seed(0)
    dense, lazy = Tiny(), None
    lazy = copy.deepcopy(dense)
    ref = torch.optim.AdamW(dense.parameters(), lr=1e-2, weight_decay=0.1, fused=True)
    opt = LazyRowsAdamW(lazy.parameters(), [lazy.emb], lr=1e-2, weight_decay=0.1, fused=True)
    for ids in BATCHES[:2]:
        for model, o in ((dense, ref), (lazy, opt)):
            model(torch.tensor(ids)).sum().backward()
            o.step()
            o.zero_grad()
    opt.flush()
    torch.testing.assert_close(lazy.emb.weight, dense.emb.weight, rtol=1e-6, atol=1e-7)
    opt.close()
    assert not lazy.emb._forward_pre_hooks  # closed: the table is a plain embedding again


def test_lazy_tables_picks_large_untied_trained_tables(monkeypatch):
    monkeypatch.setattr(lazy_rows, "MIN_ROWS", 50)
    model = Tiny(rows=64)
    assert lazy_tables(model) == [model.emb]
    assert lazy_tables(Tiny(rows=32)) == []  # small: dense is cheaper
    model.emb.weight.requires_grad_(False)
    assert lazy_tables(model) == []  # frozen: nothing to update
    tied = Tiny(rows=64)
    head = nn.Linear(8, 64, bias=False)
    head.weight = tied.emb.weight
    assert lazy_tables(nn.ModuleList([tied, head])) == []  # an output layer reads every row


def test_refuses_amsgrad():
    model = Tiny()
    with pytest.raises(ValueError, match="amsgrad"):
        LazyRowsAdamW(model.parameters(), [model.emb], amsgrad=True)


@needs_data
def test_a_full_fine_tuning_run_gives_the_dense_update_s_numbers(tmp_path, monkeypatch):
    """A run's word embedding (MiniLM's 30,522 rows) updates lazily, with the numbers of the
    dense update: the loss curve, the matrix and the trained table itself."""
    from forgetlab import load_config
    from forgetlab.recipe import train as train_module
    from forgetlab.recipe.run import run

    used = []

    def spy(model):
        used.append(tables := lazy_tables(model))
        return tables

    def config(name):
        raw = tiny_raw(tmp_path / name, method="full", tasks=("sst2",), batch_size=8, epochs=1)
        raw["training"]["weight_decay"] = 0.1
        raw["data"] = {"max_train_examples": 24, "max_eval_examples": 16}
        raw["model"] = {"max_length": 32, "dropout": 0.0, "head_dropout": 0.0}
        raw["output"]["checkpoints"] = "all"
        return load_config(raw=raw)

    monkeypatch.setattr(train_module, "lazy_tables", spy)
    run(lazy := config("lazy"))
    assert [len(t) for t in used] == [1]  # one stage, one table: the word embedding
    monkeypatch.setattr(train_module, "lazy_tables", lambda model: [])
    run(dense := config("dense"))
    a, b = (json.loads(Path(c.output.dir, "metrics.json").read_text()) for c in (lazy, dense))
    flat = [[x for row in m["accuracy_matrix"] for x in row] for m in (a, b)]
    assert flat[0] == pytest.approx(flat[1], abs=1e-6)
    states = [
        json.loads(Path(c.output.dir, "seed-1", "state.json").read_text()) for c in (lazy, dense)
    ]
    curves = [[x for point in s["stages"][0]["loss_curve"] for x in point] for s in states]
    assert curves[0] == pytest.approx(curves[1], abs=1e-6)
    key = "embeddings.word_embeddings.weight"
    tables = [
        load_file(str(next(Path(c.output.dir).rglob("model.safetensors"))))[key]
        for c in (lazy, dense)
    ]
    torch.testing.assert_close(tables[0], tables[1], rtol=1e-5, atol=1e-7)
