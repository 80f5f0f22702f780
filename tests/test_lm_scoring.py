"""Log-likelihood multiple choice, packed text, perplexity and response NLL on a tiny Llama."""

from __future__ import annotations

import copy
import math
from math import comb, log
from types import SimpleNamespace

import pytest
import torch
from tiny_llama import tiny_llama, tiny_tokenizer

from forgetlab.errors import ForgetlabError
from forgetlab.kinds.multiple_choice import MCSplit, encode_mc, mc_metrics, score_mc
from forgetlab.kinds.next_token import pack_blocks
from forgetlab.kinds.scorers.loglikelihood import (
    choice_loglikelihoods,
    naive_choice_loglikelihoods,
)
from forgetlab.kinds.scorers.nll import IGNORE, masked_nll, perplexity, response_nll
from forgetlab.models.loading import load_causal_lm
from forgetlab.tasks.base import MCExample
from forgetlab.tasks.text_files import read_text_files, stdlib_code_split

EXAMPLES = [
    MCExample("Question: What colour is the sky? Answer:", ["blue", "green", "dark red"], 0),
    MCExample("The quick brown fox ", ["jumps", "sleeps over the lazy dog"], 1),
    MCExample("", ["one", "two", "three"], 2),
    MCExample("Paris is the capital of\n", ["France", "Italy", "Spain", "Rome, the city"], 0),
    MCExample("def add(a, b):\n    return", ["a + b", "a - b"], 0),
]


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    torch.manual_seed(0)
    return load_causal_lm(str(tiny_llama(tmp_path_factory.mktemp("llama"))))


# --- multiple choice -------------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [1, 4, 64])
def test_batched_scorer_equals_naive_per_choice_scorer(llama, batch_size):
    model, tok = llama
    split = encode_mc(EXAMPLES, tok, max_length=64)
    fast = choice_loglikelihoods(model, split, batch_size, "cpu")
    slow = naive_choice_loglikelihoods(model, split, "cpu")
    assert [len(x) for x in fast] == [len(ex.choices) for ex in EXAMPLES]
    for a, b in zip(fast, slow):
        assert a == pytest.approx(b, abs=1e-4)
    assert model.training is False


def test_batched_scorer_through_a_peft_wrapper(llama):
    peft = pytest.importorskip("peft")
    model, tok = llama
    config = peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    wrapped = peft.get_peft_model(copy.deepcopy(model), config)
    split = encode_mc(EXAMPLES, tok, max_length=64)
    fast = choice_loglikelihoods(wrapped, split, 8, "cpu")
    for a, b in zip(fast, naive_choice_loglikelihoods(wrapped, split, "cpu")):
        assert a == pytest.approx(b, abs=1e-4)


def test_model_mode_is_restored(llama):
    model, tok = llama
    model.train()
    choice_loglikelihoods(model, encode_mc(EXAMPLES[:2], tok, 64), 8, "cpu")
    assert model.training
    model.eval()


def test_encoding_moves_trailing_space_onto_the_continuation():
    tok = tiny_tokenizer()
    split = encode_mc([EXAMPLES[1]], tok, max_length=64)
    ctx = split.context_ids[0]
    assert ctx == tok("The quick brown fox", add_special_tokens=False).input_ids
    for choice, cont in zip(EXAMPLES[1].choices, split.continuation_ids[0]):
        whole = tok("The quick brown fox  " + choice, add_special_tokens=False).input_ids
        assert cont == whole[len(ctx) :]
        assert tok.decode(ctx + cont) == "The quick brown fox  " + choice
    assert split.choice_chars[0] == [5, 24]


def test_empty_context_starts_from_bos():
    tok = tiny_tokenizer()
    split = encode_mc([EXAMPLES[2]], tok, max_length=64)
    assert split.context_ids[0] == [tok.bos_token_id]
    assert split.continuation_ids[0][0] == tok(" one", add_special_tokens=False).input_ids


def test_one_choice_question_raises_with_its_index():
    bad = [EXAMPLES[0], MCExample("Is it?", ["yes"], 0)]
    with pytest.raises(ForgetlabError, match="example 1 has 1 choice"):
        encode_mc(bad, tiny_tokenizer(), 64)


def test_label_out_of_range_raises():
    with pytest.raises(ForgetlabError, match="example 0: label 3 is out of range"):
        encode_mc([MCExample("Is it?", ["yes", "no"], 3)], tiny_tokenizer(), 64)


def test_long_context_is_left_truncated_and_counted(llama):
    model, tok = llama
    long = MCExample("A cat sat on the mat. " * 20 + "The dog sat on the", ["log", "mat"], 0)
    split = encode_mc([long, MCExample("Is it?", ["yes", "no"], 1)], tok, max_length=16)
    assert split.n_truncated == 1
    full = tok(long.context.rstrip(), add_special_tokens=False).input_ids
    ctx, conts = split.context_ids[0], split.continuation_ids[0]
    assert ctx == full[-len(ctx) :]  # the end of the context is kept
    assert len(ctx) + max(map(len, conts)) - 1 == 16  # model input fills the window
    assert score_mc(model, split, 8, "cpu")["n_truncated"] == 1


def test_choice_longer_than_window_raises():
    with pytest.raises(ForgetlabError, match="does not fit max_length=2"):
        encode_mc([MCExample("Q", ["a very long answer indeed", "b"], 0)], tiny_tokenizer(), 2)


class BigramStub(torch.nn.Module):
    """Logits at each position depend only on that position's token: table[token]."""

    def __init__(self, probs: list[list[float]]):
        super().__init__()
        self.table = torch.nn.Parameter(torch.tensor(probs).log())

    def forward(self, input_ids, **kwargs):  # masks, positions and cache do not matter here
        return SimpleNamespace(logits=self.table[input_ids])


# Three questions with hand-computed log-likelihoods (token ids 0..3).
STUB = BigramStub(
    [[0.1, 0.5, 0.2, 0.2], [0.25] * 4, [0.25] * 4, [0.2, 0.2, 0.3, 0.3]]  # p(next | token)
)
TOY = MCSplit(
    context_ids=[[0], [0], [3]],
    continuation_ids=[[[1], [2, 3]], [[1], [2]], [[0], [1], [2]]],
    choice_chars=[[3, 2], [1, 100], [1, 1, 1]],
    labels=[0, 1, 0],
)
TOY_LLS = [
    [log(0.5), log(0.2) + log(0.25)],  # acc right (0), acc_norm right (0)
    [log(0.5), log(0.2)],  # acc wrong (0); per character log(0.2)/100 wins: acc_norm right
    [log(0.2), log(0.2), log(0.3)],  # both pick 2, label 0: both wrong
]


def test_stub_loglikelihoods_match_hand_computation():
    for lls in (
        choice_loglikelihoods(STUB, TOY, 2, "cpu"),
        naive_choice_loglikelihoods(STUB, TOY, "cpu"),
    ):
        for got, want in zip(lls, TOY_LLS):
            assert got == pytest.approx(want, abs=1e-6)


def test_metrics_on_toy_set():
    m = score_mc(STUB, TOY, 8, "cpu")
    chance = (1 / 2 + 1 / 2 + 1 / 3) / 3
    assert (m["acc"], m["acc_norm"], m["n"]) == (pytest.approx(1 / 3), pytest.approx(2 / 3), 3)
    assert m["chance"] == pytest.approx(chance)
    # one-sided exact binomial: P(X >= 1) and P(X >= 2) for X ~ Bin(3, chance)
    assert m["p_value"] == pytest.approx(1 - (1 - chance) ** 3)
    tail2 = comb(3, 2) * chance**2 * (1 - chance) + chance**3
    assert m["p_value_norm"] == pytest.approx(tail2)


def test_ties_go_to_the_first_choice():
    split = MCSplit([[0]], [[[1], [2]]], [[1, 1]], [0])
    assert mc_metrics([[-1.0, -1.0]], split)["acc"] == 1.0


# --- packed text, perplexity, response NLL ---------------------------------------------------


def test_pack_blocks_by_hand():
    docs = [[1, 2, 3], [4], [], [5, 6]]  # stream: 1 2 3 E 4 E 5 6 E (the empty doc adds nothing)
    assert pack_blocks(docs, 3, eos_id=0) == [[1, 2, 3], [0, 4, 0], [5, 6, 0]]
    assert pack_blocks(docs, 4, eos_id=0) == [[1, 2, 3, 0], [4, 0, 5, 6]]  # remainder dropped
    assert pack_blocks(docs, 10, eos_id=0) == []
    with pytest.raises(ForgetlabError, match="block_size"):
        pack_blocks(docs, 1, eos_id=0)


def _naive_nll(model, ids: list[int], scored: range) -> list[float]:
    """-log p(ids[t] | ids[:t]) for t in scored, one forward per token."""
    out = []
    with torch.no_grad():
        for t in scored:
            logits = model(input_ids=torch.tensor([ids[:t]])).logits[0, -1]
            out.append(-float(logits.log_softmax(-1)[ids[t]]))
    return out


def test_perplexity_equals_exp_of_naive_token_nll(llama):
    model, tok = llama
    texts = ["The quick brown fox jumps over the lazy dog.", "A cat sat on the mat.", "Paris"]
    blocks = [tok(t, add_special_tokens=False).input_ids for t in texts]  # ragged: padded
    nlls = [x for b in blocks for x in _naive_nll(model, b, range(1, len(b)))]
    got = perplexity(model, blocks, batch_size=2, device="cpu")
    assert got["n_tokens"] == len(nlls)
    assert got["nll"] == pytest.approx(sum(nlls) / len(nlls), abs=1e-5)
    assert got["perplexity"] == pytest.approx(math.exp(got["nll"]))


def test_response_nll_scores_response_tokens_only(llama):
    model, tok = llama
    prompts = [
        tok("Question: What colour is the sky? Answer:").input_ids,
        tok("Paris is").input_ids,
    ]
    responses = [tok(" blue").input_ids, tok(" the capital of France").input_ids]
    got = response_nll(model, prompts, responses, batch_size=2, device="cpu")
    naive = [
        x
        for p, r in zip(prompts, responses)
        for x in _naive_nll(model, p + r, range(len(p), len(p) + len(r)))
    ]
    assert got["n_tokens"] == sum(map(len, responses))
    assert got["nll"] == pytest.approx(sum(naive) / len(naive), abs=1e-5)
    # labelling the prompt positions too (whole-sequence NLL) gives a different figure
    ids = [p + r for p, r in zip(prompts, responses)]
    labels = [[IGNORE] * len(p) + r for p, r in zip(prompts, responses)]
    assert masked_nll(model, ids, labels, 2, "cpu")["nll"] == pytest.approx(got["nll"])
    assert masked_nll(model, ids, ids, 2, "cpu")["nll"] != pytest.approx(got["nll"])
    # a different response token changes the figure
    changed = [responses[0], responses[1][:-1] + [responses[1][-1] + 1]]
    assert response_nll(model, prompts, changed, 2, "cpu")["nll"] != pytest.approx(got["nll"])


def test_empty_prompt_is_refused(llama):
    model, _ = llama
    with pytest.raises(ForgetlabError, match="prompt"):
        response_nll(model, [[]], [[1, 2]], 1, "cpu")


# --- text files --------------------------------------------------------------------------------


def test_read_text_files_sorted_and_non_utf8_raises_or_is_skipped(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "b.py").write_text("print('b')\n")
    (tmp_path / "sub" / "a.txt").write_text("héllo\n", encoding="utf-8")
    (tmp_path / "notes.md").write_text("not a wanted suffix\n")
    (tmp_path / "latin.py").write_bytes(b"s = 'caf\xe9'\n")
    with pytest.raises(ForgetlabError, match="latin.py is not UTF-8"):
        read_text_files(tmp_path)
    files = read_text_files(tmp_path, errors="skip")
    assert [p for p, _ in files] == [str(tmp_path / "b.py"), str(tmp_path / "sub" / "a.txt")]
    assert files[1][1] == "héllo\n"
    assert files.skipped == [str(tmp_path / "latin.py")]
    with pytest.raises(ForgetlabError, match="no such file"):
        read_text_files([tmp_path / "missing"])


def test_stdlib_split_is_deterministic_disjoint_and_non_empty():
    train, held_out = stdlib_code_split()
    assert (train, held_out) == stdlib_code_split()
    assert train and held_out and not set(train) & set(held_out)
    assert 0.05 < len(held_out) / (len(train) + len(held_out)) < 0.2
    excluded = {"test", "tests", "idlelib", "lib2to3", "site-packages"}
    assert not any(excluded & set(p.parts) for p in train + held_out)
    small_train, small_eval = stdlib_code_split(max_files=20)
    assert len(small_train) + len(small_eval) == 20
    assert set(small_eval) <= set(held_out) and set(small_train) <= set(train)
    assert stdlib_code_split(seed=1)[1] != held_out
