"""A randomly initialised two-layer Llama with a real tokenizer, saved to a folder in ~0.2 s.

The tokenizer is SmolLM2's when its converted copy is already in the cache (never converted
here), else a byte-level BPE trained on a few sentences: it needs no network, handles any
text (byte-level: no unknown tokens), and, like SmolLM2's, attaches a leading space to the
following word, so the context/continuation boundary behaves as with real models.
"""

from __future__ import annotations

from pathlib import Path

import torch

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Question: What colour is the sky? Answer: blue",
    "def add(a, b):\n    return a + b\n",
    "A cat sat on the mat, and the dog sat on the log.",
    "Paris is the capital of France; Rome is the capital of Italy.",
    "One, two, three, four, five, six, seven, eight, nine, ten.",
]


def tiny_tokenizer(vocab_size: int = 320):
    """Byte-level BPE with <unk>, <s>, </s> and no pad token (so padding code is exercised)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(SENTENCES, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )


def _smollm2_tokenizer():
    from transformers import AutoTokenizer

    from forgetlab.models.gguf import cached_packaged_model

    folder = cached_packaged_model("packaged:smollm2")
    return None if folder is None else AutoTokenizer.from_pretrained(folder)


def tiny_llama(tmp_path: Path, *, tokenizer: str = "tiny", seed: int = 0) -> Path:
    """Save a tiny LlamaForCausalLM + tokenizer under tmp_path/"tiny-llama"; return the folder.
    tokenizer: "tiny" (the default: the same on every machine), "smollm2" (needs the
    converted cache) or "auto" (SmolLM2's if cached, else tiny)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = _smollm2_tokenizer() if tokenizer in ("auto", "smollm2") else None
    if tok is None and tokenizer == "smollm2":
        raise RuntimeError("SmolLM2 is not converted yet (load packaged:smollm2 once)")
    tok = tok or tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,  # the byte-level tiny BPE needs long windows
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    out = Path(tmp_path) / "tiny-llama"
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out
