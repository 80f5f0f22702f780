"""Every registered task kind implements the declared interface (`TaskKind`).

A new kind is one module, one registry line in forgetlab/kinds/__init__.py and one row here.
"""

from __future__ import annotations

import inspect

import pytest

from forgetlab.errors import ForgetlabError
from forgetlab.kinds import KINDS, file_kinds
from forgetlab.kinds.base import TaskKind

# kind -> (trainable, packs, from_files)
ROWS = {
    "classification": (True, False, True),
    "instruction": (True, False, True),
    "text": (True, True, True),
    "perplexity": (False, True, False),
    "multiple_choice": (False, False, True),
    "generation": (False, False, False),
}
METHODS = [n for n, v in vars(TaskKind).items() if inspect.isfunction(v) and n[0] != "_"]
FLAGS = [n for n in TaskKind.__annotations__ if n != "name"]


def test_the_interface_declares_every_member_callers_use() -> None:
    assert set(METHODS) == {
        "encode", "train_batches", "eval_batches", "collate", "loss", "loss_units", "evaluate",
        "baseline",
    }  # fmt: skip
    assert FLAGS == ["trainable", "packs", "from_files"]


def test_every_registered_kind_has_a_row() -> None:
    assert list(KINDS) == list(ROWS)


@pytest.mark.parametrize("name", ROWS)
def test_kind_satisfies_the_interface(name: str) -> None:
    kind = KINDS[name]
    assert isinstance(kind, TaskKind)
    assert kind.name == name
    for member in METHODS:
        assert callable(getattr(kind, member)), f"{name}.{member} is not callable"
    flags = tuple(getattr(kind, flag) for flag in FLAGS)
    assert all(isinstance(f, bool) for f in flags)
    assert flags == ROWS[name]


# perplexity is scored only too, but its tokens have a loss: a regulariser may take curvature
# on it (it keeps the text kind's loss)
@pytest.mark.parametrize("name", ["multiple_choice", "generation"])
def test_scored_only_kinds_without_a_token_loss_refuse_to_train(name: str) -> None:
    with pytest.raises(ForgetlabError, match="scored, not trained"):
        KINDS[name].loss(None, "t", {})
    with pytest.raises(ForgetlabError, match="scored, not trained"):
        KINDS[name].collate(None, [0], 0, "cpu")
    with pytest.raises(ForgetlabError, match="scored, not trained"):
        KINDS[name].loss_units(None, [0])


def test_loss_units_count_what_the_loss_averages() -> None:
    """Examples for classification; labelled targets for the next-token kinds (a row's
    first label predicts nothing: no token comes before it)."""
    from forgetlab.kinds.classification import EncodedSplit
    from forgetlab.kinds.next_token import LMSplit
    from forgetlab.kinds.scorers.nll import IGNORE

    split = EncodedSplit([[1, 2], [3], [4, 5, 6]], None, [0, 1, 0])
    assert KINDS["classification"].loss_units(split, [0, 2]) == 2
    lm = LMSplit([[1, 2, 3, 4], [5, 6, 7]], [[1, IGNORE, 3, 4], [IGNORE, IGNORE, 7]])
    assert KINDS["instruction"].loss_units(lm, [0, 1]) == 3
    assert KINDS["text"].loss_units(lm, [0]) == 2


def test_perplexity_trains_like_text_but_is_scored_only() -> None:
    assert KINDS["perplexity"].loss is KINDS["text"].loss
    assert KINDS["perplexity"].encode is KINDS["text"].encode


def test_file_kinds_come_from_the_registry() -> None:
    assert file_kinds() == ("classification", "instruction", "multiple_choice", "text")
