"""Text files as task data: reading files and folders as UTF-8, and the standard library's
own .py files split by file into train and held-out code."""

from __future__ import annotations

import hashlib
import os
import sysconfig
from collections.abc import Iterable, Sequence
from pathlib import Path

from forgetlab.errors import ForgetlabError

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
