"""Pruning on the eval.every curve: the recipe hands each curve point to the trial, Optuna's
median pruner stops a trial that learns less than the completed ones at the same point, and a
two-objective sweep prunes through its companion single-objective study."""

from __future__ import annotations

import optuna
import pytest

from forgetlab.resolve import load_config
from forgetlab.sweeps import workers
from forgetlab.sweeps.prune import CurveReporter, companion_name
from forgetlab.sweeps.spec import parse_sweep
from tests.conftest import needs_data, tiny_raw

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _trial(study: optuna.Study, spec, curve: list[float]) -> str:
    """Run one scripted trial through a CurveReporter: each value is a curve point of stage 1
    (scores[0]); the last value is the trial's objective."""
    trial = study.ask()
    reporter = CurveReporter(trial, spec)
    try:
        for k, value in enumerate(curve, start=1):
            reporter(1, 1, k, len(curve) + 1, [value, 0.0])
    except optuna.TrialPruned:
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        return "pruned"
    values = [curve[-1]] if len(spec.metrics) == 1 else [curve[-1], 0.1]
    reporter.finish(values)
    study.tell(trial, values[0] if len(values) == 1 else values)
    return "complete"


def test_the_median_pruner_stops_a_trial_that_learns_less_at_the_same_point():
    spec = parse_sweep({"objectives": ["learning"], "pruner": "median", "prune_startup": 2})
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.MedianPruner(2))
    assert _trial(study, spec, [0.50, 0.60, 0.70]) == "complete"
    assert _trial(study, spec, [0.55, 0.65, 0.72]) == "complete"
    # below the median of the completed trials at step 1 (0.525): pruned at its first point
    assert _trial(study, spec, [0.30, 0.90, 0.95]) == "pruned"
    pruned = study.trials[-1]
    assert pruned.intermediate_values == {1: 0.30}
    assert _trial(study, spec, [0.56, 0.70, 0.80]) == "complete"  # above the median: runs on


def test_two_objectives_prune_through_a_companion_study():
    spec = parse_sweep({"pruner": "median", "prune_on": "learning", "prune_startup": 1})
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(
        storage=storage, study_name="s", directions=["maximize", "minimize"]
    )
    assert _trial(study, spec, [0.50, 0.60]) == "complete"
    assert _trial(study, spec, [0.20, 0.90]) == "pruned"
    companion = optuna.load_study(storage=storage, study_name=companion_name("s"))
    states = [t.state.name for t in companion.trials]
    assert states == ["COMPLETE", "PRUNED"]
    assert companion.trials[0].value == 0.60  # the watched objective settles it
    assert [t.user_attrs["trial"] for t in companion.trials] == [0, 1]


@needs_data
def test_the_recipe_hands_every_curve_point_to_the_callback(tmp_path):
    raw = tiny_raw(tmp_path / "run", "lora", max_steps=3)
    raw["eval"] = {"every": 1}
    seen = []
    from forgetlab.recipe.run import run

    result = run(load_config(raw=raw), on_curve=lambda *point: seen.append(point))
    curves = result.seed_metrics[1]["curves"]
    # every step but a stage's last (that one is the matrix row), for both stages
    assert [(s, st) for _, s, st, _, _ in seen] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    assert [p[4] for p in seen] == [c["scores"] for c in curves]


def test_a_pruned_trial_ends_pruned_and_the_sweep_goes_on(tmp_path, monkeypatch):
    """Through the worker's objective: scripted curves instead of training."""
    from forgetlab.sweeps import study as studies
    from forgetlab.sweeps.trial import load_sweep_config

    raw = {
        "name": "p",
        "tasks": ["rte", "sst2"],
        "method": {"name": "lora"},
        "eval": {"every": 1},
        "output": {"dir": str(tmp_path / "sweep"), "store": str(tmp_path / "store.sqlite")},
        "sweep": {
            "space": {"training.lr": [1.0e-4, 2.0e-4, 3.0e-4, 4.0e-4]},
            "objectives": ["learning"],
            "pruner": "median",
            "prune_startup": 2,
        },
    }
    sweep = load_sweep_config(raw=raw)
    curves = {1.0e-4: [0.5, 0.6], 2.0e-4: [0.6, 0.7], 3.0e-4: [0.1, 0.2], 4.0e-4: [0.7, 0.8]}

    def scripted(config, on_curve=None):
        curve = curves[config.training.lr]
        for k, value in enumerate(curve, start=1):
            on_curve(1, 1, k, 3, [value, 0.0])
        agg = {"initial_acc": {"mean": curve[-1]}}
        return {"aggregate": agg, "accuracy_matrix": [[0, 0]] * 3, "majority_baseline": [0, 0]}

    monkeypatch.setattr(workers, "run_trial", scripted)
    spec, points = sweep.spec, sweep.spec.grid()
    sweep.out.mkdir(parents=True)
    url = studies.default_storage(sweep.out)
    rdb = studies.open_storage(url, spec)
    studies.open_study(rdb, "p", spec, points, {"m": 1}, resume=False)
    # a fixed order: the two good rates complete first, then the bad one is pruned
    study = studies.load(rdb, "p", spec, points)
    by_lr = {p.params["training.lr"]: p.name for p in points}
    for lr in sorted(curves):
        study.enqueue_trial({"point": by_lr[lr]})
    assert workers.work(sweep, url, "p", "-") == 4
    states = {t.params["point"]: t.state.name for t in studies.load(rdb, "p", spec, points).trials}
    assert sorted(states.values()) == ["COMPLETE", "COMPLETE", "COMPLETE", "PRUNED"]
    assert [p for p, s in states.items() if s == "PRUNED"] == [by_lr[3.0e-4]]


@pytest.mark.parametrize("bad", [{"prune_startup": -1}])
def test_bad_pruner_settings(bad):
    with pytest.raises(Exception, match="prune_startup"):
        parse_sweep({"objectives": ["learning"], "pruner": "median", **bad})
