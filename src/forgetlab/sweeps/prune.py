"""Pruning a trial on its eval.every curve, with Optuna's own pruners.

A trial reports one intermediate value per curve point: the score of the task being trained
at that point — the running estimate of what that stage learns (R[j][j]), so pruning watches
learning (`initial_acc`, or `target_gain`, which differs from it by the fixed majority
baselines and so ranks trials alike). Steps count curve points across the trial's stages and
seeds, the same structure in every trial of a sweep, so a pruner compares like with like.

Optuna prunes single-objective studies only (`Trial.report` is refused on a multi-objective
study). With two objectives the config names the one to prune on (`sweep.prune_on`); its
values go to a companion single-objective study, `<study>:prune`, in the same storage, whose
pruner decides, and the real trial is then pruned.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import optuna

    from forgetlab.sweeps.spec import SweepSpec

WATCHED = ("initial_acc", "target_gain")  # what a curve point measures: learning so far


def make_pruner(spec: SweepSpec) -> optuna.pruners.BasePruner | None:
    import optuna  # loads only where a study is opened (the spec is read without it)

    if spec.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=spec.prune_startup)
    if spec.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner()
    return None


def companion_name(study_name: str) -> str:
    return f"{study_name}:prune"


class CurveReporter:
    """The `on_curve` callback of one trial's run: reports each point and raises
    `optuna.TrialPruned` when the pruner says so. `finish` / `pruned` settle the companion
    trial of a two-objective study (a single-objective trial is settled by Optuna itself)."""

    def __init__(self, trial: optuna.Trial, spec: SweepSpec) -> None:
        import optuna

        self.spec, self.steps = spec, 0
        self.companion: optuna.Study | None = None
        if len(spec.metrics) == 1:
            self.target = trial
        else:
            self.companion = optuna.create_study(
                storage=trial.study._storage,
                study_name=companion_name(trial.study.study_name),
                direction="maximize",
                pruner=make_pruner(spec),
                load_if_exists=True,
            )
            self.target = self.companion.ask()
            self.target.set_user_attr("trial", trial.number)

    def __call__(self, seed: int, stage: int, step: int, total: int, scores: list[float]) -> None:
        value = float(scores[stage - 1])  # the score of the task this stage trains
        self.steps += 1
        self.target.report(value, self.steps)
        if self.target.should_prune():
            from optuna import TrialPruned

            self.pruned()
            raise TrialPruned(
                f"pruned at seed {seed} stage {stage} step {step}/{total}: learning {value:.3f}"
            )

    def finish(self, values: list[float]) -> None:
        """The trial completed: its watched objective settles the companion trial."""
        if self.companion is not None:
            watched = self.spec.metrics.index(self.spec.prune_metric)
            self.companion.tell(self.target, values[watched])

    def pruned(self) -> None:
        if self.companion is not None:
            from optuna.trial import TrialState

            self.companion.tell(self.target, state=TrialState.PRUNED)
            self.companion = None  # told once
