"""A run directory as one object: where each of its files lives, what it holds (a run? a
finished run of this version? which checkpoints?) and how to read it.

    <run>/config.yaml            the resolved config
    <run>/metrics.json           all seeds: per-seed metrics and mean ± std ± 95% CI
    <run>/run.log
    <run>/seed-<s>/state.json    rows finished so far (what --resume continues from)
    <run>/seed-<s>/metrics.json, accuracy_matrix.csv
    <run>/seed-<s>/checkpoints/stage-<i>-<task>/   backbone (safetensors or PEFT adapter), heads,
                                 checksums.json (SHA-256 of each file, checked on load)
    <run>/analyses/<name>.json   cached analyses

The recipe writes these files (atomically, through `forgetlab.atomic`); the analyses, the
report, `compare` and --resume read them through this class, so a layout or a check changes
in one place. Every read names the file when it is not what it should be (not JSON,
truncated, the wrong shape, written by a newer forgetlab), and reading never changes a file.
metrics.json and state.json record the forgetlab version that wrote them.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import yaml

from forgetlab.atomic import read_json, remove_stale_temp
from forgetlab.config import Config
from forgetlab.errors import ConfigError, ForgetlabError
from forgetlab.version import __version__

# What a run-level metrics.json must hold to be tabulated, drawn or analysed.
SUMMARY_KEYS = (
    "name",
    "method",
    "model",
    "lr",
    "tasks",
    "seeds",
    "majority_baseline",
    "accuracy_matrix",
    "learned_seeds",
    "aggregate",
)
# What rebuilding a finished run's models needs (the analyses): its seeds and their metrics.
FINISHED_KEYS = ("version", "tasks", "seeds", "accuracy_matrix", "per_seed")


def major_minor(version: str) -> tuple[str, ...]:
    """A run written by another major.minor version may have another layout or numbers."""
    return tuple(str(version).split(".")[:2])


def _release(version: object) -> tuple[int, ...]:
    """(major, minor) as numbers; (0,) for what is not a version string."""
    try:
        return tuple(int(part) for part in str(version).split(".")[:2])
    except ValueError:
        return (0,)


def read_run_file(path: Path, keys: tuple[str, ...] = ()) -> dict:
    """A run's JSON file (metrics.json, state.json), checked to be a mapping holding `keys`
    and not written by a newer forgetlab (whose layout this one cannot know); ForgetlabError
    names the file otherwise. Nothing is written."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise ForgetlabError(
            f"{path} holds {json.dumps(data)[:40]}, not a forgetlab record: it is damaged"
        )
    version = data.get("version")
    if version is not None and _release(version) > _release(__version__):
        raise ForgetlabError(
            f"{path} was written by forgetlab {version}, newer than this {__version__}: "
            "upgrade forgetlab to read it"
        )
    missing = [k for k in keys if k not in data]
    if missing:
        raise ForgetlabError(
            f"{path} lacks {', '.join(missing)}: written by another version of forgetlab, "
            "or damaged"
        )
    return data


class RunDir:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # ---- where each file lives -----------------------------------------------------------

    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.json"

    @property
    def log_path(self) -> Path:
        return self.path / "run.log"

    @property
    def analyses_dir(self) -> Path:
        return self.path / "analyses"

    def analysis_path(self, name: str) -> Path:
        return self.analyses_dir / f"{name}.json"

    def seed_dir(self, seed: int) -> Path:
        return self.path / f"seed-{seed}"

    def state_path(self, seed: int) -> Path:
        return self.seed_dir(seed) / "state.json"

    def seed_metrics_path(self, seed: int) -> Path:
        return self.seed_dir(seed) / "metrics.json"

    def matrix_csv_path(self, seed: int) -> Path:
        return self.seed_dir(seed) / "accuracy_matrix.csv"

    def checkpoint_dir(self, seed: int, stage: int, task: str) -> Path:
        """The model after `stage` (1-based), whose task was `task`."""
        return self.seed_dir(seed) / "checkpoints" / f"stage-{stage}-{task}"

    @property
    def lock_path(self) -> Path:
        return self.path / ".lock"

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the run directory for one writer: a second `forgetlab run` into it (another
        shell, a sweep worker) is refused at once instead of interleaving its files with
        this one's. An advisory lock on <run>/.lock, released when the process ends, however
        it ends (a killed run leaves no stale lock)."""
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
                raise ForgetlabError(
                    f"{self.path} is being written by another forgetlab process (pid {holder}); "
                    "wait for it, or choose another --out"
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    # ---- what it holds -------------------------------------------------------------------

    def remove_stale_temp(self) -> list[Path]:
        """Clear the half-written temporary files and checkpoint folders that a killed writer
        left behind (`.stage-*.tmp`, `.state.json.*.tmp`); only under `lock()`."""
        return remove_stale_temp(self.path) if self.path.is_dir() else []

    def holds_results(self) -> bool:
        """Anything computed: a config.yaml alone is a run that failed before computing
        anything (e.g. a bad task name), and starting again over it loses nothing."""
        return self.metrics_path.exists() or any(self.path.glob("seed-*"))

    def summary(self) -> dict:
        """The run-level metrics.json, checked to hold what a table or a figure reads (any
        version); ForgetlabError names the path and what is wrong."""
        if not self.path.is_dir():
            why = "it is a file" if self.path.exists() else "no such directory"
            raise ForgetlabError(f"{self.path} is not a run directory: {why}")
        if not self.metrics_path.is_file():
            raise ForgetlabError(f"{self.path} is not a run directory: metrics.json is missing")
        return _checked_summary(self.metrics_path, read_run_file(self.metrics_path), SUMMARY_KEYS)

    def finished(self) -> dict:
        """The metrics.json of a finished run of this forgetlab version, every seed complete:
        what rebuilding its models needs. Raises ForgetlabError saying what is wrong."""
        if not self.path.is_dir():
            raise ForgetlabError(f"{self.path} is not a directory")
        if not self.config_path.is_file():
            raise ForgetlabError(f"{self.path} is not a forgetlab run directory (no config.yaml)")
        if not self.metrics_path.is_file():
            raise ForgetlabError(
                f"{self.path} holds an incomplete run (no metrics.json): finish it with "
                f"`forgetlab run <config> --out {self.path} --resume` first"
            )
        metrics = read_run_file(self.metrics_path, FINISHED_KEYS)
        if not isinstance(metrics["per_seed"], dict) or not all(
            isinstance(m, dict) for m in metrics["per_seed"].values()
        ):
            raise ForgetlabError(f"{self.metrics_path} is damaged: per_seed is not per seed")
        if major_minor(metrics["version"]) != major_minor(__version__):
            raise ForgetlabError(
                f"{self.path} was written by forgetlab {metrics['version']}; this is "
                f"{__version__}: rerun it with this version to analyse it"
            )
        incomplete = [s for s, m in metrics["per_seed"].items() if not m.get("complete")]
        if incomplete:
            raise ForgetlabError(f"{self.path}: seed(s) {', '.join(incomplete)} did not finish")
        return metrics

    # ---- reads ---------------------------------------------------------------------------

    def metrics(self) -> dict:
        """metrics.json as it is (a mapping, not from a newer forgetlab; no other checks)."""
        return read_run_file(self.metrics_path)

    def state(self, seed: int) -> dict | None:
        """A seed's state.json (the rows finished so far), or None before its first row."""
        path = self.state_path(seed)
        if not path.is_file():
            return None
        state = read_run_file(path, ("seed", "rows", "stages"))
        if not isinstance(state["rows"], list) or not isinstance(state["stages"], list):
            raise ForgetlabError(f"{path} is damaged: rows and stages must be lists")
        if len(state["stages"]) != max(len(state["rows"]) - 1, 0):
            raise ForgetlabError(
                f"{path} is damaged: {len(state['rows'])} rows but {len(state['stages'])} stages"
            )
        return state

    def seed_metrics(self, seed: int) -> dict:
        """A seed's metrics.json, checked to be one (what a resumed run reuses)."""
        return read_run_file(self.seed_metrics_path(seed), ("seed", "accuracy_matrix"))

    def saved_config(self) -> dict:
        """config.yaml as a dict (not validated: what --resume compares against)."""
        try:
            saved = yaml.safe_load(self.config_path.read_text(encoding="utf-8"))
        except FileNotFoundError as e:
            raise ForgetlabError(f"{self.config_path} not found") from e
        except (UnicodeDecodeError, yaml.YAMLError) as e:
            raise ForgetlabError(f"{self.config_path} is damaged: not a YAML config") from e
        if not isinstance(saved, dict | None):
            raise ForgetlabError(f"{self.config_path} is damaged: not a mapping of sections")
        return saved or {}

    def config(self, trust_remote_code: bool = False) -> Config:
        """config.yaml, validated as this version validates a config. Reading someone's run
        never runs model-repo code by itself: a config.yaml that sets
        model.trust_remote_code is refused unless the reader passes `trust_remote_code`."""
        from forgetlab.resolve import load_config  # the plug-in registries, loaded on demand

        saved = self.saved_config()
        model = saved.get("model")
        if isinstance(model, dict) and model.get("trust_remote_code") and not trust_remote_code:
            raise ForgetlabError(
                f"{self.config_path} sets model.trust_remote_code: true, which runs code from "
                "the model's repository: pass --trust-remote-code (trust_remote_code=True) if "
                "you trust it"
            )
        try:
            return load_config(raw=saved)
        except ConfigError as e:
            raise ForgetlabError(
                f"{self.path}/config.yaml is not a valid config for this forgetlab version: {e}"
            ) from e

    def config_text(self) -> str | None:
        """config.yaml as text, for showing (odd bytes replaced, never fatal)."""
        try:
            return self.config_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None


def _checked_summary(metrics: Path, summary: object, keys: tuple[str, ...]) -> dict:
    """`summary` if it holds `keys` and a (T+1) x T matrix with T baselines and flags."""
    stale = f"{metrics} was written by another version of forgetlab or is incomplete"
    if not isinstance(summary, dict) or "version" not in summary:
        raise ForgetlabError(f"{stale}: it has no 'version' key")
    missing = [k for k in keys if k not in summary]
    if missing:
        raise ForgetlabError(f"{stale}: missing {', '.join(missing)}")
    T = len(summary["tasks"]) if isinstance(summary["tasks"], list) else 0
    try:
        R = np.asarray(summary["accuracy_matrix"], float)
        sizes = (len(summary["majority_baseline"]), len(summary["learned_seeds"]))
    except (TypeError, ValueError) as e:
        raise ForgetlabError(f"{stale}: {e}") from e
    if T == 0 or R.shape != (T + 1, T) or sizes != (T, T):
        raise ForgetlabError(
            f"{stale}: accuracy_matrix is {R.shape}, majority_baseline/learned_seeds have "
            f"{sizes} entries, for {T} tasks (expected ({T + 1}, {T}) and {T} each)"
        )
    return summary
