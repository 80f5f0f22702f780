"""forgetlab.malloc: glibc's malloc keeps what a step frees, once a process, unless the user
keeps glibc's defaults (FORGETLAB_MALLOC=default)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from forgetlab import malloc


class FakeLibc:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def gnu_get_libc_version(self) -> bytes:
        return b"2.36"

    def mallopt(self, option: int, value: int) -> int:
        self.calls.append((option, value))
        return 1


@pytest.fixture
def libc(monkeypatch):
    fake = FakeLibc()
    monkeypatch.setattr(malloc, "_done", False)
    monkeypatch.setattr(malloc.ctypes, "CDLL", lambda _name: fake)
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.delenv(malloc.ENV, raising=False)
    return fake


def test_the_policy_is_applied_once_a_process(libc):
    assert malloc.keep_freed_memory() is True
    assert libc.calls == [(malloc.M_MMAP_MAX, 0), (malloc.M_TRIM_THRESHOLD, 2**31 - 1)]
    assert malloc.keep_freed_memory() is False  # the second stage: nothing more
    assert len(libc.calls) == 2


@pytest.mark.parametrize("value", ["default", " Default "])
def test_forgetlab_malloc_default_keeps_glibcs_settings(libc, monkeypatch, value):
    monkeypatch.setenv(malloc.ENV, value)
    assert malloc.keep_freed_memory() is False and libc.calls == []


def test_nothing_is_done_without_glibc(libc, monkeypatch):
    class Musl:
        def mallopt(self, option: int, value: int) -> int:  # pragma: no cover - never called
            raise AssertionError("mallopt called without glibc")

    monkeypatch.setattr(malloc.ctypes, "CDLL", lambda _name: Musl())
    assert malloc.keep_freed_memory() is False
    monkeypatch.setattr(malloc, "_done", False)
    monkeypatch.setattr(sys, "platform", "darwin")
    assert malloc.keep_freed_memory() is False


@pytest.mark.parametrize("value", ["", "default", "forgetlab", " Forgetlab "])
def test_the_choices_pass_the_check(monkeypatch, value):
    monkeypatch.setenv(malloc.ENV, value)
    malloc.check_setting()


def test_an_unknown_value_is_refused_in_one_line_by_the_cli(monkeypatch, capsys, tmp_path):
    from forgetlab.cli import main
    from forgetlab.errors import ConfigError

    monkeypatch.setenv(malloc.ENV, "jemalloc")
    with pytest.raises(ConfigError, match="FORGETLAB_MALLOC='jemalloc' is not one of"):
        malloc.check_setting()
    out = tmp_path / "run"
    quickstart = Path(__file__).parents[1] / "configs" / "quickstart.yaml"
    assert main(["run", str(quickstart), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "forgetlab: error: FORGETLAB_MALLOC='jemalloc' is not one of forgetlab, default "
        "(unset: forgetlab)"
    ]
    assert not out.exists()
