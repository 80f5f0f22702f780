"""`forgetlab predict-lr` and the `predicted` sampler: the rate from known eigenvalues, the
ordering check and the search points by hand, bad input, and one tiny real run on MiniLM."""

from __future__ import annotations

import math

import pytest
import yaml
from answers_fixtures import same_seeds, write_run

from forgetlab.analyses.predict_lr import (
    ordering,
    parse_reference,
    predicted_rates,
    spearman,
    swept_best,
)
from forgetlab.cli import main
from forgetlab.errors import ConfigError, ForgetlabError
from forgetlab.sweeps.spec import parse_sweep, search_values

# ---------------------------------------------------------------------------------------
# the prediction from known eigenvalues
# ---------------------------------------------------------------------------------------


def test_predicted_rate_is_reference_rate_times_eigenvalue_ratio():
    # lr_m = 1e-3 · 2 / λ_m: dora (λ 8) 2.5e-4, full (λ 0.5) 4e-3, lora itself 1e-3
    rates = predicted_rates({"lora": 2.0, "dora": 8.0, "full": 0.5}, "lora", 1e-3)
    assert rates == pytest.approx({"lora": 1e-3, "dora": 2.5e-4, "full": 4e-3})


@pytest.mark.parametrize(
    ("lambdas", "reference", "rate", "message"),
    [
        ({"lora": 1.0}, "dora", 1e-3, "reference method 'dora' is not among"),
        ({"lora": 1.0}, "lora", 0.0, "reference rate must be a positive number"),
        ({"lora": 1.0, "dora": 0.0}, "lora", 1e-3, "λ_max must be positive"),
        ({"lora": 1.0, "dora": -2.0}, "lora", 1e-3, "dora λ_max=-2"),
        ({"lora": math.nan}, "lora", 1e-3, "λ_max must be positive"),
    ],
)
def test_bad_eigenvalues_or_reference_raise_one_error(lambdas, reference, rate, message):
    with pytest.raises(ForgetlabError, match=message):
        predicted_rates(lambdas, reference, rate)


def test_parse_reference():
    assert parse_reference("lora=1e-3") == ("lora", 1e-3)
    assert parse_reference({"dora": 2e-4}) == ("dora", 2e-4)
    for bad, message in [("lora", "METHOD=RATE"), ("lora=x", "not a number"),
                         ("lora=-1e-3", "positive"), ("lora=0", "positive")]:  # fmt: skip
        with pytest.raises(ForgetlabError, match=message):
            parse_reference(bad)


# ---------------------------------------------------------------------------------------
# which definition orders the swept best rates
# ---------------------------------------------------------------------------------------


def test_spearman_by_hand():
    # ranks differ by d = (0, 1, 1, 0): ρ = 1 − 6·Σd² / (n(n²−1)) = 1 − 12/60 = 0.8
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    # ties share their mean rank: x ranks (1, 2.5, 2.5), y (1, 2, 3); ρ = 1.5 / √(1.5·2)
    assert spearman([1, 2, 2], [10, 20, 30]) == pytest.approx(1.5 / math.sqrt(3.0))
    assert spearman([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)
    assert spearman([1], [2]) is None
    assert spearman([1, 1], [1, 2]) is None  # a constant side has no order


def test_ordering_says_which_definition_orders_the_best_rates():
    best = {"a": 1e-4, "b": 1e-3, "c": 1e-2}
    predicted = {
        "module": {"a": 2e-4, "b": 5e-4, "c": 3e-3},  # same order as best
        "trainable": {"a": 3e-3, "b": 5e-4, "c": 2e-4},  # reversed
        "warmup": {"a": 1e-4, "b": 3e-3, "c": 2e-3, "d": 1.0},  # b, c swapped; d has no best
    }
    out = ordering(predicted, best)
    assert out["module"] == {"methods": ["a", "b", "c"], "spearman": 1.0, "orders": True}
    assert out["trainable"]["spearman"] == pytest.approx(-1.0)
    assert not out["trainable"]["orders"]
    assert out["warmup"]["methods"] == ["a", "b", "c"]
    assert out["warmup"]["spearman"] == pytest.approx(0.5)  # 1 − 6·2/24
    assert not out["warmup"]["orders"]


def _grid(root, method, peak_lr, rates=(1e-4, 1e-3, 1e-2)):
    """A finished grid of one method whose learning peaks at `peak_lr`."""
    return [
        write_run(root, f"{method}-{lr:g}", method, same_seeds(0.9 if lr == peak_lr else 0.7, 0.1),
                  lr=lr)
        for lr in rates
    ]  # fmt: skip


def test_swept_best_is_each_methods_best_rate(tmp_path):
    runs = _grid(tmp_path, "lora", 1e-3) + _grid(tmp_path, "dora", 1e-4)
    assert swept_best(runs, ["lora", "dora"]) == {"lora": 1e-3, "dora": 1e-4}
    assert swept_best(runs, ["lora"]) == {"lora": 1e-3}


# ---------------------------------------------------------------------------------------
# the `predicted` sampler: a grid cut down around the prediction
# ---------------------------------------------------------------------------------------


def test_search_values_by_hand():
    grid = [1e-4, 1.78e-4, 3.16e-4, 5.62e-4, 1e-3, 1.78e-3]
    # 6e-4: nearest 5.62e-4 (|ln| 0.065), then 1e-3 (0.51), then 3.16e-4 (0.64)
    assert search_values(grid, 6e-4, 1) == [5.62e-4, 1e-3, 3.16e-4]
    # far below the grid: its lowest value and the two above it (fewer than 2·2+1)
    assert search_values(grid, 1e-6, 2) == [1e-4, 1.78e-4, 3.16e-4]
    assert search_values(grid, 1e-3, 0) == [1e-3]


def _sweep(**kw):
    raw = {
        "methods": ["lora", "dora"],
        "space": {"training.lr": {"log": [1e-4, 1e-2], "per_decade": 2}},
        "sampler": "predicted",
        **kw,
    }
    return parse_sweep(raw)


def test_predicted_grid_runs_the_values_around_each_arms_rate():
    spec = _sweep(predict_lr={"rates": {"lora": 1e-3, "dora": 3e-3}, "around": 1})
    by_arm = {}
    for p in spec.grid():
        by_arm.setdefault(p.arm, []).append(p.params["training.lr"])
    # grid 1e-4, 3.16e-4, 1e-3, 3.16e-3, 1e-2 (rounded to 3 digits); lora: 1e-3, then
    # 3.16e-3 (ratio 3.16) before 3.16e-4 (ratio 3.165); dora 3e-3: 3.16e-3 (|ln| 0.05),
    # 1e-3 (1.10), 1e-2 (1.20)
    assert by_arm == {"lora": [1e-3, 3.16e-3, 3.16e-4], "dora": [3.16e-3, 1e-3, 1e-2]}
    assert spec.is_grid
    # before the prediction is known (checking every point): the whole grid
    assert len(_sweep().grid()) == 10
    assert _sweep().predict_lr.definition == "trainable"


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"space": {"method.r": [4, 8]}}, "needs a training.lr axis"),
        ({"trials": 4}, "sweep.trials is for random"),
        ({"predict_lr": {"rates": {"lora": 1e-3}}}, "no rate for dora"),
        ({"predict_lr": {"reference": {"full": 1e-3}}}, "'full' is not one of sweep.methods"),
        ({"predict_lr": {"definition": "hessian"}}, "definition='hessian'"),
        ({"predict_lr": {"rates": {"lora": 1e-3, "dora": -1.0}}}, "positive"),
    ],
)
def test_bad_predicted_sweeps_raise_one_error(kw, message):
    with pytest.raises(ConfigError, match=message):
        _sweep(**kw)


def test_predict_lr_needs_methods():
    with pytest.raises(ConfigError, match="list sweep.methods"):
        parse_sweep({"variants": [{"name": "a", "overrides": []}], "space": {},
                     "predict_lr": True})  # fmt: skip


# ---------------------------------------------------------------------------------------
# the command
# ---------------------------------------------------------------------------------------


@pytest.fixture
def tiny_config(tmp_path):
    path = tmp_path / "tiny.yaml"
    config = {
        "name": "tiny",
        "model": {"name": "packaged:minilm", "max_length": 32, "pooling": "mean"},
        "tasks": ["sst2"],
        "data": {"max_train_examples": 16, "max_eval_examples": 8},
        "method": {"name": "lora"},
        "training": {"epochs": 1, "batch_size": 8},
        "output": {"dir": str(tmp_path / "out"), "checkpoints": "none"},
    }
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--methods", "lora,bogus", "--reference", "lora=1e-3"], "unknown method bogus"),
        (["--methods", "lora,dora", "--reference", "full=1e-3"], "'full' is not among --methods"),
        (["--methods", "lora", "--reference", "lora=0"], "must be a positive number"),
        (["--methods", "lora", "--reference", "lora=-1e-3"], "must be a positive number"),
        (["--methods", "lora", "--reference", "lora=1e-3", "--definition", "x"], "definition x"),
    ],
)
def test_bad_command_lines_print_one_error(tiny_config, capsys, args, message):
    assert main(["predict-lr", str(tiny_config), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("forgetlab: error:") and message in err[0]


def test_predict_lr_on_minilm_beside_a_swept_grid(tiny_config, tmp_path, capsys):
    runs = _grid(tmp_path / "grid", "lora", 1e-3) + _grid(tmp_path / "grid", "dora", 1e-4)
    argv = ["predict-lr", str(tiny_config), "--methods", "lora,dora", "--reference",
            "lora=1e-3", "--examples", "8", "--iters", "3", "--warmup-steps", "2", "--quiet",
            "--runs", *map(str, runs)]  # fmt: skip
    assert main([*argv, "--json"]) == 0
    result = yaml.safe_load(capsys.readouterr().out)  # JSON is YAML
    assert result["options"]["definitions"] == ["module", "trainable", "warmup"]
    lora, dora = result["methods"]["lora"], result["methods"]["dora"]
    assert lora["module"] == dora["module"] == "backbone.encoder.layer.0.attention.self.query"
    for d in ("module", "trainable", "warmup"):
        assert lora["predicted"][d] == pytest.approx(1e-3)  # the reference predicts itself
        ratio = lora["lambda_max"][d] / dora["lambda_max"][d]
        assert dora["predicted"][d] == pytest.approx(1e-3 * ratio)
    # DoRA's magnitude vector is an adapter parameter of the module too
    assert dora["n_params"]["module"] > lora["n_params"]["module"]
    assert dora["warmup_lr"] == pytest.approx(dora["predicted"]["trainable"])
    assert (lora["swept_best"], dora["swept_best"]) == (1e-3, 1e-4)
    for d, o in result["ordering"].items():
        expected = dora["predicted"][d] < lora["predicted"][d]  # best: dora's rate is lower
        assert o["orders"] is expected and o["spearman"] == (1.0 if expected else -1.0)


def test_a_predicted_sweep_records_its_rates_and_resume_reuses_them(tiny_config, tmp_path):
    from forgetlab.atomic import atomic_write_json, read_json
    from forgetlab.sweeps.predicted import PREDICTION_FILE, with_predictions
    from forgetlab.sweeps.trial import load_sweep_config

    raw = yaml.safe_load(tiny_config.read_text(encoding="utf-8"))
    raw["sweep"] = {
        "methods": ["lora", "full"],
        "space": {"training.lr": {"log": [1e-6, 1e-2], "per_decade": 1}},
        "sampler": "predicted",
        "seeds": [1],
        "objectives": ["learning"],
        "predict_lr": {"examples": 8, "iters": 3, "around": 1, "reference": {"lora": 1e-3}},
    }
    sweep = with_predictions(load_sweep_config(raw=raw), resume=False)
    saved = read_json(tmp_path / "out" / PREDICTION_FILE)
    rates = sweep.spec.predict_lr.rates
    assert rates == saved["rates"] and rates["lora"] == pytest.approx(1e-3)
    assert sweep.sweep_raw["predict_lr"]["rates"] == rates  # what sweep.yaml will hold
    lora = [p.params["training.lr"] for p in sweep.spec.grid() if p.arm == "lora"]
    assert lora[0] == 1e-3 and sorted(lora) == [1e-4, 1e-3, 1e-2]
    # --resume: the saved rates, not a new Hessian
    atomic_write_json(tmp_path / "out" / PREDICTION_FILE, {**saved, "rates": {"lora": 1e-6,
                      "full": 1e-2}})  # fmt: skip
    again = with_predictions(load_sweep_config(raw=raw), resume=True)
    assert [p.params["training.lr"] for p in again.spec.grid()] == [1e-6, 1e-5, 1e-2, 1e-3]
