"""What a sweep produced: one record per trial (its point, state, objectives, run directory)
and the text table `forgetlab sweep` prints."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from forgetlab.sweeps.spec import Point

if TYPE_CHECKING:
    import optuna

SWEEP_FILE = "sweep.yaml"  # marks a sweep directory (the resolved sweep config)
SUMMARY_FILE = "sweep.json"


@dataclass
class TrialRecord:
    number: int
    point: str | None
    state: str  # COMPLETE | PRUNED | FAIL | RUNNING | WAITING
    values: list[float] | None
    run_dir: str | None
    params: dict[str, Any]
    error: str | None = None
    retry_of: int | None = None  # the failed trial this one repeats
    pareto: bool = False  # on the study's best front (one objective: the best trial)


@dataclass
class SweepResult:
    sweep_dir: Path
    study: str
    storage: str  # without password
    objectives: list[str]
    directions: list[str]
    trials: list[TrialRecord] = field(default_factory=list)
    worker_exits: list[int] = field(default_factory=list)
    expected: int = 0  # trials the sweep asks for: its grid points, or sweep.trials
    answers: dict | None = None  # forgetlab.answers over the finished trials (answers.json)

    @property
    def complete(self) -> list[TrialRecord]:
        return [t for t in self.trials if t.state == "COMPLETE"]

    @property
    def missing(self) -> int:
        """Trials still to run (failed, or never started): what --resume would run."""
        return max(0, self.expected - len(self.complete))

    @property
    def run_dirs(self) -> list[Path]:
        """The finished trials' run directories, in point order."""
        return [Path(t.run_dir) for t in sorted(self.complete, key=_order) if t.run_dir]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["sweep_dir"] = str(self.sweep_dir)
        out.pop("answers")  # its own file: answers.json
        return out

    def format(self) -> str:
        name_w = max([5, *(len(t.point or "") for t in self.trials)]) + 2
        heads = "".join(f"{m:>16}" for m in self.objectives)
        lines = [
            f"sweep {self.study!r}: {len(self.complete)} of {self.expected} trials complete "
            f"(storage {self.storage})",
            "",
            f"{'trial':>6}  {'point':<{name_w}}{'state':<10}{heads}  front",
        ]
        for t in sorted(self.trials, key=_order):
            vals = "".join(
                f"{v:>16.4f}" for v in (t.values or [float("nan")] * len(self.objectives))
            )
            note = "*" if t.pareto else ""
            if t.error:
                note = f"error: {t.error}"
            elif t.retry_of is not None:
                note += f" (retry of trial {t.retry_of})"
            lines.append(f"{t.number:>6}  {t.point or '-':<{name_w}}{t.state:<10}{vals}  {note}")
        goal = ", ".join(f"{m} ({d})" for m, d in zip(self.objectives, self.directions))
        front = "best trial" if len(self.objectives) == 1 else "Pareto front"
        lines += ["", f"objectives: {goal}; * = {front} (the seeds' mean of each trial)"]
        if any(code != 0 for code in self.worker_exits):
            lines.append(f"worker exit codes: {self.worker_exits} (negative: killed by signal)")
        return "\n".join(lines)


def _order(t: TrialRecord) -> tuple:
    return (t.point or "", t.number)


def collect(study: optuna.Study, points: list[Point]) -> list[TrialRecord]:
    """Every trial of the study but the surplus ones (a grid point another trial kept)."""
    from optuna.trial import TrialState  # optuna loads only where a study is read

    from forgetlab.sweeps.study import point_name

    trials = [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get("surplus")]
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    best = {t.number for t in study.best_trials} if done else set()
    return [
        TrialRecord(
            number=t.number,
            point=point_name(t, points) or t.user_attrs.get("run_dir", "").rsplit("/", 1)[-1],
            state=t.state.name,
            values=list(t.values) if t.values is not None else None,
            run_dir=t.user_attrs.get("run_dir"),
            params=dict(t.params),
            error=t.user_attrs.get("error"),
            retry_of=t.system_attrs.get("failed_trial"),
            pareto=t.number in best,
        )
        for t in trials
    ]


def objective_metrics(objectives: list[str]) -> tuple[str | None, str | None]:
    """The (learning, forgetting) metrics a sweep's resolved objectives name, each None where
    they name none (the answers then use their defaults)."""
    from forgetlab.answers.points import FORGETTING, LEARNING

    learning = next((m for m in objectives if m in LEARNING), None)
    forgetting = next((m for m in objectives if m in FORGETTING), None)
    return learning, forgetting


def answer_metrics(path: str | Path) -> tuple[str | None, str | None]:
    """`objective_metrics` of a sweep directory, from its sweep.json (the resolved objectives:
    `learning` -> initial_acc): what its answers.json was computed on; (None, None) when
    `path` is not a finished sweep."""
    file = Path(path) / SUMMARY_FILE
    if not (Path(path) / SWEEP_FILE).is_file() or not file.is_file():
        return None, None
    return objective_metrics(json.loads(file.read_text()).get("objectives") or [])


def trial_run_dirs(path: str | Path) -> list[Path]:
    """A sweep directory's finished trials (each an ordinary run directory), in name order;
    any other path as it is."""
    path = Path(path)
    if not (path / SWEEP_FILE).is_file():
        return [path]
    return sorted(p.parent for p in (path / "trials").glob("*/metrics.json"))
