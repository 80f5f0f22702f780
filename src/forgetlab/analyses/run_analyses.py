"""Run analyses over a finished run, caching each result in the run directory and the store.

The analyses to choose from come in as an argument (the registry in `forgetlab.analyses`
passes itself down), so this module never imports its own package back.

Order of work, so that bad input changes nothing: open and check the run, resolve every
option, run every analysis's `check` (checkpoints present, options valid), and only then
compute and write <run>/analyses/<name>.json atomically.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType

from forgetlab.analyses.runs import OpenRun, open_config, open_run
from forgetlab.atomic import atomic_write_json, read_json
from forgetlab.config import Config
from forgetlab.errors import ForgetlabError
from forgetlab.store import ResultsStore
from forgetlab.version import __version__

log = logging.getLogger("forgetlab")


def _params(module: ModuleType, options: dict) -> dict:
    unknown = set(options) - set(module.DEFAULTS)
    if unknown:
        raise ForgetlabError(
            f"analysis {module.NAME!r} has no option {', '.join(sorted(unknown))} "
            f"(options: {', '.join(module.DEFAULTS)})"
        )
    return {**module.DEFAULTS, **{k: v for k, v in options.items() if v is not None}}


def _cached(path: Path, params: dict, seed: int) -> dict | None:
    if not path.is_file():
        return None
    data = read_json(path)
    same = data.get("params") == params and data.get("seed") == seed
    return data if same and data.get("version") == __version__ else None


def _run_one(
    run: OpenRun, module: ModuleType, name: str, seed: int, params: dict, force: bool, store
) -> dict:
    path = run.run_dir / "analyses" / f"{name}.json"
    cached = None if force else _cached(path, params, seed)
    if cached is not None:
        log.info("%s: cached in %s (--force recomputes)", name, path)
        return cached
    log.info("%s: computing for seed %d", name, seed)
    result = {
        "analysis": module.NAME,
        "version": __version__,
        "params": params,
        **module.compute(run, seed, params),
    }
    atomic_write_json(path, result)
    if store is not None:
        ResultsStore(store).record_analysis(run.run_dir, name, params, result)
    return result


def _all(run: OpenRun) -> bool:
    return True


def analyze(
    registry: Mapping[str, ModuleType],
    run_dir: str | Path,
    which: list[str] | None = None,
    *,
    seed: int | None = None,
    force: bool = False,
    store: str | Path | None = None,
    device: str | None = None,
    options: dict[str, dict] | None = None,
    trust_remote_code: bool = False,
) -> dict[str, dict]:
    """Run the analyses of `registry` named in `which` (default: every one that applies) on
    one finished run; `options` maps an analysis name to its options (see each module's
    DEFAULTS). `trust_remote_code`: allow a run whose config sets model.trust_remote_code."""
    unknown = [w for w in which or [] if w not in registry]
    if unknown:
        raise ForgetlabError(
            f"unknown analysis {', '.join(unknown)} (known: {', '.join(registry)})"
        )
    options = options or {}
    run = open_run(run_dir, device, trust_remote_code)
    # default: every analysis that applies to this run (diversity needs a causal LM)
    which = list(which or [n for n, m in registry.items() if getattr(m, "applies", _all)(run)])
    stray = set(options) - set(which)
    if stray:
        raise ForgetlabError(f"options given for analyses not run: {', '.join(sorted(stray))}")
    seed = run.seed(seed)
    plan = [(registry[w], _params(registry[w], options.get(w, {}))) for w in which]
    for module, params in plan:
        module.check(run, seed, params)
    store = store if store is not None else run.config.output.store
    return {
        module.NAME: _run_one(run, module, module.NAME, seed, params, force, store)
        for module, params in plan
    }


def hessian(
    curvature: ModuleType,
    target: str | Path | Config,
    *,
    seed: int | None = None,
    force: bool = False,
    store: str | Path | None = None,
    device: str | None = None,
    trust_remote_code: bool = False,
    **options,
) -> dict:
    """λ_max of the loss Hessian, by the analysis module `curvature`. `target` is a finished
    run directory (any saved stage; cached in <run>/analyses/hessian-stage<k>-<group>.json) or
    a config (stage 0 only, nothing written: the Hessian at init, to compare methods before
    training them)."""
    params = _params(curvature, options)
    if isinstance(target, Config):
        run = open_config(target, device)
        seed = run.seed(seed)
        if params["stage"] != 0:
            raise ForgetlabError("a config has not trained: only stage 0 (init) is available")
        curvature.check(run, seed, params)
        return {
            "analysis": "hessian",
            "version": __version__,
            "params": params,
            **curvature.compute(run, seed, params),
        }
    run = open_run(target, device, trust_remote_code)
    seed = run.seed(seed)
    curvature.check(run, seed, params)
    store = store if store is not None else run.config.output.store
    return _run_one(run, curvature, curvature.cache_name(params), seed, params, force, store)
