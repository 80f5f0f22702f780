"""forgetlab's multiple-choice scorer against lm-evaluation-harness, the reference it copies.

The same BIG-bench questions go to both: to `encode_mc` + `choice_loglikelihoods`, and (as a
local task written by `write_local_lm_eval_task`) to lm-eval's `simple_evaluate` on the same
in-memory model. acc, acc_norm, the strings lm-eval scored and every choice's log-likelihood
must agree. Fast tests use the tiny random Llama; `-m slow` repeats the check on the real SmolLM2.
Everything runs offline: local tasks read a JSONL file, the hub is never needed.
"""

from __future__ import annotations

import os

# Before datasets / huggingface_hub are imported: they read these once, at import.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import json  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from forgetlab.errors import ForgetlabError  # noqa: E402
from forgetlab.kinds.multiple_choice import encode_mc, mc_metrics  # noqa: E402
from forgetlab.kinds.scorers.loglikelihood import choice_loglikelihoods  # noqa: E402
from forgetlab.tasks.base import MCExample  # noqa: E402
from forgetlab.tasks.bigbench import load_bigbench  # noqa: E402
from forgetlab.tasks.registry import default_data_dir  # noqa: E402

pytest.importorskip("lm_eval", reason='lm-eval is not installed (pip install "forgetlab[lmeval]")')

from forgetlab.harness.lm_eval_tasks import run_lm_eval, write_local_lm_eval_task  # noqa: E402

DATA_DIR = default_data_dir()
BIGBENCH = DATA_DIR / "bigbench"
needs_bigbench = pytest.mark.skipif(
    not BIGBENCH.is_dir(),
    reason=f"BIG-bench data not found at {BIGBENCH} (set FORGETLAB_DATA or place ../shared/data)",
)
ATOL = 1e-4  # per-choice log-likelihood, fp32, different batching/padding on each side


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """Offline even if another test module imported datasets / huggingface_hub before us."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tiny_llama import tiny_llama
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tiny_llama(tmp_path_factory.mktemp("tiny"))
    model = AutoModelForCausalLM.from_pretrained(folder)
    return model, AutoTokenizer.from_pretrained(folder)


def questions(folder: str, n: int, prompt: str = "raw") -> list[MCExample]:
    """The first `n` questions of a shipped BIG-bench task (raw: the input as in the file)."""
    return load_bigbench(DATA_DIR, folder, prompt=prompt).eval[:n]


def _window(model) -> int:
    # lm-eval's HFLM takes its window from the config the same way (max_position_embeddings)
    return model.config.max_position_embeddings


def crosscheck(model, tokenizer, tasks: dict[str, list[MCExample]], folder: Path, **kw):
    """Score `tasks` with lm-eval and with forgetlab; assert they agree; return both."""
    for name, examples in tasks.items():
        write_local_lm_eval_task(examples, folder, name)
    theirs = run_lm_eval(model, tokenizer, list(tasks), include_path=folder, log_samples=True, **kw)
    assert set(theirs) == set(tasks)
    ours = {}
    for name, examples in tasks.items():
        split = encode_mc(examples, tokenizer, _window(model), target_delimiter=" ")
        assert split.n_truncated == 0  # truncation differs by design (see encode_mc)
        lls = choice_loglikelihoods(model, split, batch_size=16, device="cpu")
        ours[name] = mc_metrics(lls, split) | {"loglikelihoods": lls}
        ref = theirs[name]
        assert ref["n"] == len(examples)
        # lm-eval scored exactly the strings our encoder tokenises
        for ex, sample in zip(examples, ref["samples"]):
            assert [tuple(a) for a in sample["arguments"]] == [
                (ex.context, " " + c) for c in ex.choices
            ]
        flat_ours = torch.tensor([x for row in lls for x in row])
        flat_ref = torch.tensor([x for row in ref["loglikelihoods"] for x in row])
        assert flat_ours.shape == flat_ref.shape
        diff = (flat_ours - flat_ref).abs().max().item()
        assert diff < ATOL, f"{name}: per-choice log-likelihoods differ by {diff:.2e}"
        assert ours[name]["acc"] == pytest.approx(ref["acc"], abs=1e-12)
        assert ours[name]["acc_norm"] == pytest.approx(ref["acc_norm"], abs=1e-12)
    return ours, theirs


# --- writing the local task --------------------------------------------------------


def test_local_task_files(tmp_path):
    examples = [MCExample("Ctx  ", ["a b", " c"], 1), MCExample("D", ["e", "f", "g"], 2)]
    yaml_path = write_local_lm_eval_task(examples, tmp_path / "t", "fl_demo")
    config = json.loads(yaml_path.read_text())  # written as JSON, which is YAML
    assert config["output_type"] == "multiple_choice" and config["target_delimiter"] == " "
    data = Path(config["dataset_kwargs"]["data_files"]["test"])
    assert data.is_absolute()
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    assert rows == [{"context": "Ctx  ", "choices": ["a b", " c"], "label": 1},
                    {"context": "D", "choices": ["e", "f", "g"], "label": 2}]  # fmt: skip
    with pytest.raises(ForgetlabError, match="task name"):
        write_local_lm_eval_task(examples, tmp_path / "t", "bad name")
    with pytest.raises(ForgetlabError, match="label"):
        write_local_lm_eval_task([MCExample("x", ["a", "b"], 5)], tmp_path / "t", "fl_bad")


# --- the cross-check on the tiny random Llama ------------------------------------------------


@needs_bigbench
def test_tiny_llama_matches_lm_eval(tiny, tmp_path):
    model, tokenizer = tiny
    tasks = {
        # social_iqa inputs end in a space: lm-eval moves it onto the continuation
        "fl_social_iqa": questions("social_iqa", 20),
        # navigate in BIG-bench's own prompt (its task prefix, "Q:"/"A:"): newlines inside
        "fl_navigate": questions("navigate", 8, prompt="bigbench"),
    }
    ours, _ = crosscheck(model, tokenizer, tasks, tmp_path / "tasks", batch_size=8)
    assert ours["fl_social_iqa"]["n"] == 20


@needs_bigbench
def test_peft_model_matches_lm_eval_and_state_is_restored(tiny, tmp_path):
    from peft import LoraConfig, get_peft_model

    base, tokenizer = tiny
    # init_lora_weights=False: non-zero adapters, so the LoRA path really changes the scores
    model = get_peft_model(
        base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    try:
        model.train()
        torch.manual_seed(123)
        expected_next = torch.rand(3)
        torch.manual_seed(123)
        examples = questions("date_understanding", 6)
        crosscheck(model, tokenizer, {"fl_date_peft": examples}, tmp_path / "tasks")
        assert model.training  # HFLM calls model.eval(); run_lm_eval puts it back
        assert torch.equal(torch.rand(3), expected_next)  # lm-eval reseeds; restored
    finally:
        model.unload()  # the module-scoped base model must stay plain for other tests


def test_tasks_none_runs_every_local_task(tiny, tmp_path):
    model, tokenizer = tiny
    examples = [MCExample("The cat sat on the", ["mat", "dog", "sky"], 0)] * 2
    for name in ("fl_a", "fl_b"):
        write_local_lm_eval_task(examples, tmp_path, name)
    result = run_lm_eval(model, tokenizer, None, include_path=tmp_path, batch_size=4)
    assert set(result) == {"fl_a", "fl_b"} and result["fl_a"]["n"] == 2
    assert set(result["fl_a"]) == {"acc", "acc_norm", "n"}


def test_unknown_task_names_close_matches_before_running(tiny):
    model, tokenizer = tiny
    with pytest.raises(ForgetlabError, match=r"hellaswagg.*'hellaswag'"):
        run_lm_eval(model, tokenizer, ["hellaswagg"])


def test_hub_task_offline_says_so(tiny):
    model, tokenizer = tiny
    with pytest.raises(ForgetlabError, match="could not fetch the data of arc_challenge.*hub"):
        run_lm_eval(model, tokenizer, ["arc_challenge"], limit=2)


def test_tokenizer_that_adds_bos_matches_lm_eval(tmp_path):
    """lm-eval's HFLM (since PR #3347, in 0.4.13) encodes with the tokenizer's own special
    tokens: a tokenizer that adds BOS (Llama 2/3, Gemma, Mistral) puts BOS in front of every
    context. encode_mc does the same, so the contexts agree token for token."""
    from lm_eval.models.huggingface import HFLM
    from tiny_llama import tiny_llama, tiny_tokenizer
    from tokenizers import processors
    from transformers import AutoModelForCausalLM

    tokenizer = tiny_tokenizer()
    tokenizer._tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tokenizer.bos_token_id)]
    )
    assert tokenizer("The")["input_ids"][0] == tokenizer.bos_token_id
    model = AutoModelForCausalLM.from_pretrained(tiny_llama(tmp_path, tokenizer="tiny"))
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=1)
    context_ids, continuation_ids = lm._encode_pair("The quick", " brown fox")
    split = encode_mc([MCExample("The quick", ["brown fox", "dog"], 0)], tokenizer, 64)
    assert split.continuation_ids[0][0] == continuation_ids
    assert split.context_ids[0] == context_ids  # both start with BOS


# --- the real SmolLM2 ------------------------------------------------------------------------


@pytest.mark.slow
@needs_bigbench
def test_smollm2_matches_lm_eval(tmp_path):
    from forgetlab.models.loading import load_causal_lm

    model, tokenizer = load_causal_lm("packaged:smollm2")
    tasks = {f"fl_{name}": questions(name, 40) for name in ("social_iqa", "date_understanding")}
    ours, theirs = crosscheck(model, tokenizer, tasks, tmp_path / "tasks", batch_size=16)
    for name in tasks:
        assert 0.0 < ours[name]["acc"] < 1.0  # a real model, not a degenerate argmax
