"""forgetlab.malloc: glibc's malloc keeps what a step frees, once a process, unless the user
keeps glibc's defaults (FORGETLAB_MALLOC=default)."""

from __future__ import annotations

import sys

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
