"""Shared pieces of the property-based (hypothesis) tests: the example budget of the default
suite and of `-m slow`, and the check that a failure is forgetlab's own one-line error.

Every fuzz test is deterministic (derandomize: the same examples on every machine, no example
database written into the checkout).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from forgetlab.errors import ForgetlabError

_COMMON = {
    "derandomize": True,
    "database": None,
    "deadline": None,  # two shared CPU cores: timings vary too much for per-example deadlines
    "suppress_health_check": [
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,  # tmp_path, capsys: each example rewrites them
    ],
}


def fuzz_settings(examples: int) -> settings:
    """A property's budget: a few dozen to 150 examples in the default suite, thousands in
    its `-m slow` twin."""
    return settings(max_examples=examples, **_COMMON)


def outcome(call: Callable[[], Any]) -> Any:
    """`call()`'s result, or None when it refused with a ForgetlabError of one line; any other
    exception (a traceback for the user) or a message of several lines fails the test."""
    try:
        return call()
    except ForgetlabError as e:
        message = str(e)
        if not message.strip() or "\n" in message or "\r" in message:
            pytest.fail(f"{type(e).__name__} is not one non-empty line: {message!r}")
        return None
