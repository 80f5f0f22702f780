"""Files written so that a crash or a full disk never leaves half of one.

Every file is written to a temporary name in its final folder, flushed, then renamed over the
target: a reader sees either the old file or the new one. Folders (checkpoints) are built
beside their final name and renamed in one step.
"""

from __future__ import annotations

import contextlib
import errno
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


def _disk_error(path: Path, error: OSError) -> ForgetlabError:
    if error.errno == errno.ENOSPC:
        return ForgetlabError(f"disk full while writing {path}; files written before are intact")
    return ForgetlabError(f"cannot write {path}: {error.strerror or error}")


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
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ForgetlabError(f"{path} not found") from e
    except json.JSONDecodeError as e:
        raise ForgetlabError(f"{path} is not valid JSON ({e})") from e


@contextlib.contextmanager
def atomic_dir(final: Path):
    """Yield a temporary folder beside `final`; on success it replaces `final` in one rename."""
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
        _usual_mode(tmp, directory=True)
    except OSError as e:
        raise _disk_error(final, e) from e
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _disk_error(final, e) from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as e:
        raise ForgetlabError(f"output dir {folder} is not writable: {e.strerror or e}") from e


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
