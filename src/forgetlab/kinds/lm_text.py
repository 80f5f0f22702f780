"""Plain-text language modelling: continued-pretraining data, perplexity and response NLL.

Documents are tokenised, joined with eos and cut into fixed-length blocks (`pack_blocks`).
`perplexity` scores such blocks; `response_nll` scores only the response tokens of
(prompt, response) pairs, the learning figure for instruction tuning.

The scorers take a Hugging Face causal LM (or a PEFT wrapper of one): `model(input_ids=...,
attention_mask=...)` returning `.logits`. They run in eval mode under `torch.inference_mode`
and accumulate losses in float32 whatever the model's dtype; wrap a call in
`torch.autocast(device_type, dtype=torch.bfloat16)` to score faster in bf16.
"""

from __future__ import annotations

import hashlib
import math
import os
import sysconfig
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F

from forgetlab.errors import ForgetlabError

IGNORE = -100  # label of positions that are not scored (the cross-entropy convention)

# Parts of the standard library that are not ordinary library code: tests (many not UTF-8,
# some deliberately broken), demos, the IDE, the retired 2to3 tool, a pydoc text dump, and
# generated character tables (encodings/cp*.py), which would make perplexity look too good.
STDLIB_EXCLUDED = frozenset(
    {
        "site-packages",
        "dist-packages",
        "test",
        "tests",
        "idlelib",
        "lib2to3",
        "turtledemo",
        "pydoc_data",
        "encodings",
        "__phello__",
        "__pycache__",
    }
)


# --- data ------------------------------------------------------------------------------------


def pack_blocks(token_lists: list[list[int]], block_size: int, eos_id: int) -> list[list[int]]:
    """Join documents into one stream, each followed by eos, and cut it into consecutive blocks
    of `block_size` tokens; the incomplete last block is dropped. Empty documents are skipped
    (they would add a lone eos). Deterministic: the order of `token_lists` is kept."""
    if block_size < 2:
        raise ForgetlabError(f"block_size must be at least 2 tokens, got {block_size}")
    stream = [t for doc in token_lists if doc for t in (*doc, eos_id)]
    usable = len(stream) - len(stream) % block_size
    return [stream[i : i + block_size] for i in range(0, usable, block_size)]


class TextFiles(list):
    """A list of (path, text) pairs; `skipped` names the files that were not valid UTF-8."""

    def __init__(self, items: Iterable[tuple[str, str]] = (), skipped: Iterable[str] = ()):
        super().__init__(items)
        self.skipped: list[str] = list(skipped)


def read_text_files(
    paths_or_folder: str | Path | Sequence[str | Path],
    suffixes: tuple[str, ...] = (".py", ".txt"),
    errors: str = "raise",
) -> TextFiles:
    """Read files (folders are searched recursively for `suffixes`) as UTF-8, sorted by path.
    errors="raise": a file that is not UTF-8 raises ForgetlabError naming it; "skip": it is
    left out and listed in the result's `skipped`."""
    if errors not in ("raise", "skip"):
        raise ForgetlabError(f"errors must be 'raise' or 'skip', got {errors!r}")
    items, skipped = [], []
    for path in _collect_files(paths_or_folder, suffixes):
        try:
            items.append((str(path), path.read_bytes().decode("utf-8")))
        except UnicodeDecodeError as e:
            if errors == "raise":
                msg = f"{path} is not UTF-8 text ({e.reason} at byte {e.start})"
                raise ForgetlabError(msg) from e
            skipped.append(str(path))
    return TextFiles(items, skipped)


def _collect_files(paths: str | Path | Sequence[str | Path], suffixes: tuple[str, ...]):
    roots = [paths] if isinstance(paths, (str, Path)) else list(paths)
    found: set[Path] = set()
    for root in map(Path, roots):
        if root.is_dir():
            found.update(p for p in root.rglob("*") if p.is_file() and p.suffix in suffixes)
        elif root.is_file():
            found.add(root)  # named explicitly: read whatever its suffix
        else:
            raise ForgetlabError(f"no such file or folder: {root}")
    return sorted(found)


def stdlib_code_split(
    eval_fraction: float = 0.1, max_files: int | None = None, seed: int = 0
) -> tuple[list[Path], list[Path]]:
    """The Python standard library's own .py files, split by file into (train, eval).

    A file's side is decided by a hash of its path relative to the stdlib folder (and `seed`),
    not by a shuffle: it does not depend on which other files exist or on `max_files`, so a
    held-out file is never trained on, on any machine with the same Python version.
    `max_files` caps the total, split in the same proportion, picking files by another hash."""
    if not 0 < eval_fraction < 1:
        raise ForgetlabError(f"eval_fraction must be between 0 and 1, got {eval_fraction}")
    root = Path(sysconfig.get_paths()["stdlib"])
    files = _stdlib_files(root)
    if not files:
        raise ForgetlabError(f"no standard-library .py files found under {root}")
    is_eval = {p: _unit_hash(f"split:{seed}", p.relative_to(root)) < eval_fraction for p in files}
    train = [p for p in files if not is_eval[p]]
    held_out = [p for p in files if is_eval[p]]
    if max_files is not None:
        n_eval = max(1, round(max_files * eval_fraction))
        train = _subsample(train, max(1, max_files - n_eval), root, seed)
        held_out = _subsample(held_out, n_eval, root, seed)
    return train, held_out


def _stdlib_files(root: Path) -> list[Path]:
    files = []
    for folder, subfolders, names in os.walk(root):
        # Pruned while walking: site-packages alone can hold far more files than the stdlib.
        subfolders[:] = [
            d for d in subfolders if d not in STDLIB_EXCLUDED and not d.startswith("config-")
        ]
        files.extend(Path(folder) / n for n in names if n.endswith(".py"))
    return sorted(files)


def _unit_hash(salt: str, rel: Path) -> float:
    digest = hashlib.sha256(f"{salt}:{rel.as_posix()}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _subsample(files: list[Path], n: int, root: Path, seed: int) -> list[Path]:
    chosen = sorted(files, key=lambda p: _unit_hash(f"sample:{seed}", p.relative_to(root)))[:n]
    return sorted(chosen)


# --- scoring ---------------------------------------------------------------------------------


@contextmanager
def eval_mode(model) -> Iterator[None]:
    """Eval mode (no dropout) and no autograd for the duration; the training flag is restored."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def masked_nll(
    model,
    input_ids: list[list[int]],
    labels: list[list[int]],
    batch_size: int,
    device: str | torch.device,
) -> dict:
    """Mean NLL (nats) of the tokens whose label is not IGNORE; labels[i][t] is the token
    expected at position t (so labels == input_ids scores a whole sequence but its first
    token, which has no context). Returns nll, perplexity, n_tokens."""
    total, count = 0.0, 0
    order = sorted(range(len(input_ids)), key=lambda i: len(input_ids[i]))  # less padding
    with eval_mode(model):
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            ids, mask, lab = _right_pad([input_ids[i] for i in rows], [labels[i] for i in rows])
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            # position t predicts token t + 1
            targets = lab[:, 1:].to(device)
            total += F.cross_entropy(
                logits[:, :-1].float().flatten(0, 1),
                targets.flatten(),
                ignore_index=IGNORE,
                reduction="sum",
            ).item()
            count += int((targets != IGNORE).sum())
    if count == 0:
        raise ForgetlabError("nothing to score: no tokens with a label")
    return {"nll": total / count, "perplexity": math.exp(total / count), "n_tokens": count}


def _right_pad(
    input_ids: list[list[int]], labels: list[list[int]]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # The pad id is irrelevant: padded positions are masked out of attention and labelled
    # IGNORE; right padding keeps every real token at its unpadded position.
    width = max(len(x) for x in input_ids)
    ids = torch.zeros((len(input_ids), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    lab = torch.full_like(ids, IGNORE)
    for row, (x, y) in enumerate(zip(input_ids, labels)):
        if len(x) != len(y):
            raise ValueError("input_ids and labels rows must have the same length")
        ids[row, : len(x)] = torch.tensor(x)
        mask[row, : len(x)] = 1
        lab[row, : len(y)] = torch.tensor(y)
    return ids, mask, lab


def perplexity(model, blocks: list[list[int]], batch_size: int, device: str | torch.device) -> dict:
    """Mean token NLL (nats), perplexity = exp(NLL) and n_tokens over `blocks` (e.g. from
    `pack_blocks`). Each block's first token has no context and is not scored."""
    return masked_nll(model, blocks, blocks, batch_size, device)


def response_nll(
    model,
    prompt_ids_list: list[list[int]],
    response_ids_list: list[list[int]],
    batch_size: int,
    device: str | torch.device,
) -> dict:
    """Mean NLL over response tokens only, each given its prompt and the response so far
    (prompt positions are labelled IGNORE). Returns nll, perplexity, n_tokens."""
    if len(prompt_ids_list) != len(response_ids_list):
        raise ValueError("prompt_ids_list and response_ids_list differ in length")
    if any(not p for p in prompt_ids_list):
        # The first response token needs at least one token before it to be predicted.
        raise ForgetlabError("every prompt needs at least one token (e.g. bos)")
    ids = [p + r for p, r in zip(prompt_ids_list, response_ids_list)]
    labels = [[IGNORE] * len(p) + r for p, r in zip(prompt_ids_list, response_ids_list)]
    return masked_nll(model, ids, labels, batch_size, device)
