"""`forgetlab predict-lr`: a learning rate per method predicted from the curvature at init.

Gradient descent is stable below lr = 2/λ_max, so if a reference method's good rate is
known, a method whose loss is k times sharper should want a rate k times smaller:

    lr_m = lr_ref · λ_ref / λ_m

λ_max is the largest eigenvalue of the training-loss Hessian (the `hessian` analysis:
Lanczos on Hessian-vector products, the first task's loss on `examples` training examples),
under one of these definitions of which parameters it is taken over:

- ``module``: one adapted module — the first one whose name matches `module` (default: the
  query projection), its adapter parameters only (LoRA's A and B, DoRA's magnitude too, a
  full fine-tune's weight and bias), as "Learning Rate Matters" measures it;
- ``trainable``: every trainable parameter (all adapters and the task's head);
- ``warmup``: every trainable parameter after `warmup_steps` optimizer steps on the first
  task, each method trained at its ``trainable`` prediction (the reference at lr_ref): a
  rate stable for that method, where one rate for all would blow up the sharpest ones
  and leave the flattest ones at init. The config's optimizer and schedule, capped at
  `warmup_steps` steps.

At init a LoRA's B is zero, which makes the curvature along A vanish; after a few steps it
no longer does, which is what the ``warmup`` definition is for.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import forgetlab.analyses.hessian as hessian
from forgetlab.analyses.model_hessian import parameter_groups
from forgetlab.analyses.runs import OpenRun, open_config
from forgetlab.analyses.spec import LR_DEFINITIONS
from forgetlab.config import Config
from forgetlab.errors import ForgetlabError
from forgetlab.methods import get_method, method_config
from forgetlab.recipe.train import make_accelerator, train_stage

DEFINITIONS = LR_DEFINITIONS
DEFAULTS = {
    "definitions": DEFINITIONS,
    "module": r"query|q_proj|c_attn",  # the first adapted module whose name matches
    "warmup_steps": 5,
    "examples": 32,
    "batch_size": 16,
    "iters": 10,
    "rate_key": "training.lr",
}
# A definition "orders" the swept best rates when its predictions rank them the same way.
ORDERS = 0.999


# ---------------------------------------------------------------------------------------
# The prediction and its check (pure functions)
# ---------------------------------------------------------------------------------------


def parse_reference(text: str | Mapping[str, float]) -> tuple[str, float]:
    """`lora=1e-3` (or {"lora": 1e-3}) -> ("lora", 0.001); a positive rate or one error."""
    if isinstance(text, Mapping):
        if len(text) != 1:
            raise ForgetlabError(f"reference must name one method and its rate, got {text!r}")
        (method, raw), = text.items()  # fmt: skip
    else:
        method, sep, raw = str(text).partition("=")
        if not sep or not method.strip():
            raise ForgetlabError(f"reference must look like METHOD=RATE (lora=1e-3), got {text!r}")
    try:
        rate = float(raw)
    except (TypeError, ValueError) as e:
        raise ForgetlabError(f"reference rate {raw!r} is not a number") from e
    if not (math.isfinite(rate) and rate > 0):
        raise ForgetlabError(f"reference rate must be a positive number, got {rate:g}")
    return method.strip(), rate


def predicted_rates(lambdas: Mapping[str, float], reference: str, lr_ref: float) -> dict:
    """lr_m = lr_ref · λ_ref / λ_m for every method of `lambdas`."""
    if reference not in lambdas:
        raise ForgetlabError(
            f"reference method {reference!r} is not among the methods ({', '.join(lambdas)})"
        )
    if not (math.isfinite(lr_ref) and lr_ref > 0):
        raise ForgetlabError(f"reference rate must be a positive number, got {lr_ref:g}")
    bad = {m: v for m, v in lambdas.items() if not (math.isfinite(v) and v > 0)}
    if bad:
        listing = ", ".join(f"{m} λ_max={v:.3g}" for m, v in bad.items())
        raise ForgetlabError(
            f"λ_max must be positive to predict a rate ({listing}): at this point the loss "
            "is not curved upwards along these parameters (try another definition)"
        )
    return {m: lr_ref * lambdas[reference] / v for m, v in lambdas.items()}


def _ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, ties sharing their mean rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's ρ: the Pearson correlation of the ranks; None for fewer than two pairs or
    when either side is constant (no order to agree with)."""
    if len(x) != len(y):
        raise ForgetlabError("spearman needs two sequences of the same length")
    if len(x) < 2:
        return None
    rx, ry = _ranks(list(x)), _ranks(list(y))
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sxx = sum((a - mx) ** 2 for a in rx)
    syy = sum((b - my) ** 2 for b in ry)
    return None if sxx == 0 or syy == 0 else sxy / math.sqrt(sxx * syy)


def ordering(predicted: Mapping[str, Mapping[str, float]], best: Mapping[str, float]) -> dict:
    """Per definition: Spearman's ρ between its predicted rates and the swept best rates over
    the methods that have both, and whether it orders them (ρ = 1)."""
    out = {}
    for definition, rates in predicted.items():
        methods = [m for m in rates if m in best]
        rho = spearman([rates[m] for m in methods], [best[m] for m in methods])
        out[definition] = {
            "methods": methods,
            "spearman": rho,
            "orders": rho is not None and rho >= ORDERS,
        }
    return out


# ---------------------------------------------------------------------------------------
# λ_max per method and definition
# ---------------------------------------------------------------------------------------


def _module_group(model, pattern: str) -> tuple[str, list[str]]:
    """The first adapted module whose name matches `pattern` (else the first module that is
    not a task head) and its trainable parameters' names."""
    groups = {
        name: [n for n, _ in named]
        for name, named in parameter_groups(model, "modules").items()
        if not name.startswith("heads.")
    }
    if not groups:
        raise ForgetlabError("the model has no trainable module outside its task heads")
    regex = re.compile(pattern)
    name = next((g for g in groups if regex.search(g)), next(iter(groups)))
    return name, groups[name]


def _exact(names: list[str]) -> str:
    """A `hessian` group regex that selects exactly these parameter names."""
    return "^(?:" + "|".join(re.escape(n) for n in names) + ")$"


def _warm_up(run: OpenRun, model, seed: int, lr: float, steps: int) -> None:
    """`steps` optimizer steps of the first task at rate `lr`, in place."""
    config = run.config
    training = dataclasses.replace(config.training, lr=lr, max_steps=steps, progress_bar=False)
    task = run.tasks[0]
    train_stage(
        model,
        get_method(config.method["name"]),
        method_config(config.method),
        task.name,
        task.kind,
        task.train,
        training,
        make_accelerator(training),
        seed=seed,
        stage=1,
        pad_id=run.pad_id,
    )
    model.eval()


def _eigen(run: OpenRun, model, seed: int, group: str, options: dict) -> dict:
    params = {
        **hessian.DEFAULTS,
        "group": group,
        "examples": options["examples"],
        "batch_size": options["batch_size"],
        "iters": options["iters"],
    }
    hessian.check(run, seed, params)
    result = hessian.eigenvalues(run, model, seed, params)["results"][0]
    return {k: result[k] for k in ("lambda_max", "n_params", "iterations", "converged")}


def method_curvature(
    run: OpenRun, seed: int, options: dict, warmup_lr: float | None = None
) -> dict[str, Any]:
    """λ_max of one method's model at init under each definition in options (``warmup``
    needs `warmup_lr`, and is computed last: it trains the model)."""
    model = run.model_at(seed, 0, eager=True)
    module, names = _module_group(model, options["module"])
    # PEFT's wrapper prefix, anywhere in the name (the backbone is one attribute down)
    out: dict[str, Any] = {"module": module.replace("base_model.model.", "")}
    for definition in options["definitions"]:
        if definition == "module":
            out["module_result"] = _eigen(run, model, seed, _exact(names), options)
        elif definition == "trainable":
            out["trainable_result"] = _eigen(run, model, seed, "trainable", options)
    if "warmup" in options["definitions"]:
        if warmup_lr is None:
            raise ForgetlabError("the warmup definition needs a rate to warm up at")
        _warm_up(run, model, seed, warmup_lr, options["warmup_steps"])
        out["warmup_result"] = _eigen(run, model, seed, "trainable", options)
        out["warmup_lr"] = warmup_lr
    return out


def _options(given: Mapping[str, Any]) -> dict:
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        raise ForgetlabError(
            f"predict-lr has no option {', '.join(unknown)} (options: {', '.join(DEFAULTS)})"
        )
    options = {**DEFAULTS, **{k: v for k, v in given.items() if v is not None}}
    definitions = options["definitions"]
    if isinstance(definitions, str):
        definitions = [d.strip() for d in definitions.split(",") if d.strip()]
    bad = [d for d in definitions if d not in DEFINITIONS]
    if bad or not definitions:
        raise ForgetlabError(
            f"unknown definition {', '.join(bad) or '(none)'} "
            f"(choose from {', '.join(DEFINITIONS)})"
        )
    # warmup trains at the `trainable` prediction: that one is always computed with it
    if "warmup" in definitions and "trainable" not in definitions:
        definitions = [*definitions, "trainable"]
    options["definitions"] = [d for d in DEFINITIONS if d in definitions]
    for key in ("warmup_steps", "examples", "batch_size", "iters"):
        if not isinstance(options[key], int) or options[key] < 1:
            raise ForgetlabError(f"{key} must be a whole number >= 1, got {options[key]!r}")
    return options


def predict_lr(
    configs: Mapping[str, Config],
    reference: str | Mapping[str, float],
    *,
    seed: int | None = None,
    device: str | None = None,
    run_dirs: Sequence[str | Path] = (),
    **given: Any,
) -> dict[str, Any]:
    """The predicted rate of every method under each definition (see the module docstring).

    `configs` maps each method to its config (the same run config with method.name set);
    `reference` is METHOD=RATE, the method one of them. `run_dirs` (finished runs of a grid,
    a sweep's trials) add each method's swept best rate and, per definition, Spearman's ρ
    between the predicted and the swept best rates. Options: definitions, module,
    warmup_steps, examples, batch_size, iters, rate_key.
    """
    ref, lr_ref = parse_reference(reference)
    if ref not in configs:
        raise ForgetlabError(
            f"reference method {ref!r} is not among --methods ({', '.join(configs)})"
        )
    options = _options(given)
    base = open_config(next(iter(configs.values())), device)
    seed = base.seed(seed)
    # one tokenizer and one set of prepared tasks for every method: only the model differs
    runs = {m: dataclasses.replace(base, config=c) for m, c in configs.items()}
    at_init = {**options, "definitions": [d for d in options["definitions"] if d != "warmup"]}
    curvature = {m: method_curvature(run, seed, at_init) for m, run in runs.items()}
    lambdas = _lambdas(curvature, at_init["definitions"])
    predicted = {d: predicted_rates(lam, ref, lr_ref) for d, lam in lambdas.items()}
    if "warmup" in options["definitions"]:
        for m, run in runs.items():
            warm = method_curvature(
                run, seed, {**options, "definitions": ["warmup"]}, predicted["trainable"][m]
            )
            curvature[m].update(warm)
        lambdas.update(_lambdas(curvature, ["warmup"]))
        predicted["warmup"] = predicted_rates(lambdas["warmup"], ref, lr_ref)
    best = swept_best(run_dirs, list(configs), options["rate_key"]) if run_dirs else {}
    return {
        "reference": {"method": ref, "lr": lr_ref},
        "seed": seed,
        "task": base.tasks[0].name,
        "options": {**options, "definitions": list(options["definitions"])},
        "methods": {
            m: {
                "module": c["module"],
                "lambda_max": {d: lambdas[d][m] for d in lambdas},
                "converged": {d: c[f"{d}_result"]["converged"] for d in lambdas},
                "n_params": {d: c[f"{d}_result"]["n_params"] for d in lambdas},
                "warmup_lr": c.get("warmup_lr"),
                "predicted": {d: predicted[d][m] for d in predicted},
                "swept_best": best.get(m),
            }
            for m, c in curvature.items()
        },
        "ordering": ordering(predicted, best) if best else None,
    }


def _lambdas(curvature: dict, definitions: list[str]) -> dict[str, dict[str, float]]:
    return {
        d: {m: float(c[f"{d}_result"]["lambda_max"]) for m, c in curvature.items()}
        for d in definitions
    }


def swept_best(
    run_dirs: Sequence[str | Path], methods: list[str], rate_key: str = "training.lr"
) -> dict[str, float]:
    """Each method's best swept rate over finished runs (`forgetlab.answers`' best point by
    learning); methods without runs, or whose best point does not set the rate, are absent."""
    from forgetlab.answers import best_table, load_points

    points = [
        p for p in load_points(run_dirs) if p.learning and all(v is not None for v in p.learning)
    ]
    if not points:
        raise ForgetlabError("none of the given runs has a learning metric for every seed")
    table = best_table(points, "learning", reference=None, rate_key=rate_key)
    out = {}
    for row in table["rows"]:
        best = next(p for p in points if p.run == row["run"])
        rate = best.config.get(rate_key)
        if row["method"] in methods and isinstance(rate, int | float):
            out[row["method"]] = float(rate)
    return out


def format_text(result: dict) -> list[str]:
    """The table `forgetlab predict-lr` prints."""
    opts = result["options"]
    defs = opts["definitions"]
    ref = result["reference"]
    lines = [
        f"Predicted learning rates lr_m = lr_ref · λ_ref / λ_m (reference {ref['method']} at "
        f"{ref['lr']:g}; λ_max by Lanczos, {opts['iters']} iters, {opts['examples']} "
        f"examples of {result['task']}, seed {result['seed']})",
    ]
    header = f"  {'method':<10}" + "".join(f"{'λ ' + d:>13}{'lr ' + d:>13}" for d in defs)
    has_best = any(r["swept_best"] is not None for r in result["methods"].values())
    lines.append(header + (f"{'swept best':>13}" if has_best else ""))
    for m, r in result["methods"].items():
        cells = "".join(
            f"{r['lambda_max'][d]:>12.4g}{'' if r['converged'][d] else '*'}"
            f"{' ' if r['converged'][d] else ''}{r['predicted'][d]:>13.3g}"
            for d in defs
        )
        best = r["swept_best"]
        lines.append(f"  {m:<10}{cells}" + (f"{best:>13.3g}" if best is not None else ""))
    if any(not all(r["converged"].values()) for r in result["methods"].values()):
        lines.append("  * not converged in the iterations given (more --iters)")
    if "module" in defs:
        modules = {r["module"] for r in result["methods"].values()}
        lines.append(f"  module: {', '.join(sorted(modules))} (its trainable parameters)")
    if "warmup" in defs:
        lines.append(
            f"  warmup: all trainable parameters after {opts['warmup_steps']} steps of "
            f"{result['task']}, each method at its 'trainable' prediction"
        )
    for d, o in (result["ordering"] or {}).items():
        rho = "undefined" if o["spearman"] is None else f"{o['spearman']:.2f}"
        verdict = "orders the swept best rates" if o["orders"] else "does NOT order them"
        weak = " (two methods: ρ is ±1 whatever the rates)" if len(o["methods"]) == 2 else ""
        lines.append(f"  {d}: Spearman ρ = {rho} over {len(o['methods'])} methods: {verdict}{weak}")
    return lines
