"""`sweep.predict_lr` and `sampler: predicted`: a learning rate per arm predicted from the loss
Hessian at init (forgetlab.analyses.predict_lr), computed once when the sweep starts.

The prediction is saved as <out>/predict_lr.json and its rates written into the sweep's own
`sweep.predict_lr.rates` (sweep.yaml), so that every worker, on any machine, cuts the same
grid down (see spec.search_values) without computing a Hessian; --resume reuses them. When
the sweep ends, each arm's swept best rate and, for the definition used, Spearman's ρ between
the predicted and the swept best rates are added to predict_lr.json.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

from forgetlab.analyses.predict_lr import format_text, ordering, predict_lr, swept_best
from forgetlab.atomic import atomic_write_json, read_json
from forgetlab.sweeps.spec import RATE_KEY, parse_sweep
from forgetlab.sweeps.trial import SweepConfig, resolve

PREDICTION_FILE = "predict_lr.json"

log = logging.getLogger("forgetlab")


def predict(config: SweepConfig) -> dict:
    """The prediction for every arm of the sweep (its seeds' first seed), with `rates`: each
    arm's predicted rate under the sweep's definition."""
    spec = config.spec
    wanted = spec.predict_lr
    arms = spec.methods
    configs = {arm: resolve(copy.deepcopy(config.raw), spec.arm_overrides(arm)) for arm in arms}
    reference = wanted.reference or {arms[0]: config.base.training.lr}
    seeds = spec.seeds or config.base.seeds
    log.info("predict_lr: λ_max at init of %s (%s)", ", ".join(arms), wanted.definition)
    result = predict_lr(
        configs,
        reference,
        seed=seeds[0],
        definitions=[wanted.definition],
        examples=wanted.examples,
        iters=wanted.iters,
        warmup_steps=wanted.warmup_steps,
        rate_key=RATE_KEY,
    )
    result["definition"] = wanted.definition
    result["rates"] = {m: r["predicted"][wanted.definition] for m, r in result["methods"].items()}
    return result


def with_predictions(config: SweepConfig, resume: bool) -> SweepConfig:
    """The sweep config with `sweep.predict_lr.rates` filled in: as given, as saved by the
    run being resumed, or computed now (and saved). Unchanged without predict_lr."""
    wanted = config.spec.predict_lr
    if wanted is None or wanted.rates is not None:
        return config
    saved = config.out / PREDICTION_FILE
    if resume and saved.is_file():
        rates = read_json(saved)["rates"]
    else:
        result = predict(config)
        config.out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(saved, result)
        log.info("\n".join(format_text(result)))
        rates = result["rates"]
    sweep_raw = copy.deepcopy(config.sweep_raw)
    section = sweep_raw.get("predict_lr")
    section = dict(section) if isinstance(section, dict) else {}
    sweep_raw["predict_lr"] = {**section, "rates": dict(rates)}
    return SweepConfig(
        raw=config.raw,
        base=config.base,
        spec=parse_sweep(copy.deepcopy(sweep_raw)),
        sweep_raw=sweep_raw,
    )


def after_sweep(out: Path, run_dirs: list[Path]) -> dict | None:
    """Add the swept best rates and the ordering to <out>/predict_lr.json (when the sweep
    computed a prediction and some trials finished); the updated result, or None."""
    saved = out / PREDICTION_FILE
    if not saved.is_file() or not run_dirs:
        return None
    result = read_json(saved)
    best = swept_best(run_dirs, list(result["methods"]), RATE_KEY)
    for method, row in result["methods"].items():
        row["swept_best"] = best.get(method)
    result["ordering"] = ordering({result["definition"]: result["rates"]}, best)
    atomic_write_json(saved, result)
    return result


def prediction_text(out: Path) -> str:
    """What `forgetlab sweep` prints of <out>/predict_lr.json; empty when there is none."""
    saved = Path(out) / PREDICTION_FILE
    return "\n".join(format_text(read_json(saved))) if saved.is_file() else ""
