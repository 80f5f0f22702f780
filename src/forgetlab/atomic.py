"""Files written so that a crash or a full disk never leaves half of one.

Every file is written to a temporary name in its final folder, flushed, then renamed over the
target: a reader sees either the old file or the new one. Folders (checkpoints) are built
beside their final name and renamed in one step; a checkpoint's gets a `checksums.json`
(SHA-256 of every file) first, which `verify_checksums` checks before anything loads it.
Temporary names start with "." and end in ".tmp": `remove_stale_temp` clears those a killed
writer left behind.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from forgetlab.errors import ForgetlabError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _usual_mode(path: str | Path, directory: bool = False) -> None:
    """mkstemp/mkdtemp create 0600/0700 entries; results are meant to be shared like any file
    the user writes, so give them the mode the umask would (e.g. 0644 / 0755)."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


CHECKSUMS = "checksums.json"
# How writers that do their own I/O (safetensors' Rust code raises SafetensorError, not
# OSError) report a full disk: ENOSPC's text, or Rust's io::ErrorKind for it.
_DISK_FULL_TEXT = ("No space left on device", "os error 28", "StorageFull")


def _disk_error(path: Path, error: BaseException) -> ForgetlabError:
    if getattr(error, "errno", None) == errno.ENOSPC or _says_disk_full(error):
        return ForgetlabError(f"disk full while writing {path}; files written before are intact")
    return ForgetlabError(f"cannot write {path}: {getattr(error, 'strerror', None) or error}")


def _says_disk_full(error: BaseException) -> bool:
    return any(text in str(error) for text in _DISK_FULL_TEXT)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            _usual_mode(tmp)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError as e:
        raise _disk_error(path, e) from e


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: str | Path) -> Any:
    """A JSON file's content; ForgetlabError names the file when it is missing, unreadable,
    not UTF-8 or not JSON (e.g. truncated by a full disk or a kill)."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ForgetlabError(f"{path} not found") from e
    except UnicodeDecodeError as e:
        raise ForgetlabError(f"{path} is damaged: not UTF-8 text (byte {e.start})") from e
    except json.JSONDecodeError as e:
        raise ForgetlabError(f"{path} is not valid JSON, truncated or damaged ({e})") from e
    except OSError as e:
        raise ForgetlabError(f"cannot read {path}: {e.strerror or e}") from e


@contextlib.contextmanager
def atomic_dir(final: Path, checksums: bool = False):
    """Yield a temporary folder beside `final`; on success its files get the umask's mode
    (with `checksums`, a checksums.json too), and it replaces `final` in one rename. A full
    disk, whoever was writing (safetensors included), ends in one line."""
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
        _usual_mode(tmp, directory=True)
    except OSError as e:
        raise _disk_error(final, e) from e
    try:
        yield tmp
        for entry in tmp.rglob("*"):  # writers' own temp files may be 0600 (mkstemp)
            _usual_mode(entry, directory=entry.is_dir())
        if checksums:
            sums = {str(p.relative_to(tmp)): file_sha256(p) for p in sorted(tmp.rglob("*"))}
            (tmp / CHECKSUMS).write_text(json.dumps({k: v for k, v in sums.items() if v}))
            _usual_mode(tmp / CHECKSUMS)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) or (isinstance(e, Exception) and _says_disk_full(e)):
            raise _disk_error(final, e) from e
        raise


def file_sha256(path: Path) -> str | None:
    """The SHA-256 of a file's bytes (None for a folder)."""
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_checksums(folder: Path) -> None:
    """Check every file `atomic_dir` recorded in `folder`'s checksums.json: ForgetlabError
    names the first one missing or whose bytes changed (truncated, overwritten, flipped bits).
    A folder without checksums.json (written before checksums were recorded) passes."""
    sums_path = folder / CHECKSUMS
    if not sums_path.is_file():
        return
    sums = read_json(sums_path)
    if not isinstance(sums, dict):
        raise ForgetlabError(f"{sums_path} is damaged: not a mapping of file to SHA-256")
    for name, expected in sums.items():
        path = folder / name
        actual = file_sha256(path)
        if actual is None:
            raise ForgetlabError(f"checkpoint file {path} is missing (listed in {sums_path})")
        if actual != expected:
            raise ForgetlabError(
                f"checkpoint file {path} is damaged: its SHA-256 differs from the one recorded "
                "when it was written (truncated or overwritten)"
            )


def remove_stale_temp(folder: Path) -> list[Path]:
    """Remove the temporary files and folders (".*.tmp") that a writer killed mid-write left
    anywhere under `folder`; returns them. Call it only while holding the folder's lock."""
    stale = sorted(folder.rglob(".*.tmp"), key=lambda p: len(p.parts), reverse=True)
    for path in stale:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                path.unlink()
    return stale


def check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as e:
        raise ForgetlabError(f"output dir {folder} is not writable: {e.strerror or e}") from e


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
