"""forgetlab: fine-tune pretrained language models and measure what each method learns and
what it forgets.

    import forgetlab
    cfg = forgetlab.load_config("configs/quickstart.yaml", ["method.name=lora"])
    result = forgetlab.run(cfg)
    print(forgetlab.format_run(result.metrics))
"""

import sys
import types

# Before anything imports torch: OpenMP reads its wait policy once, when torch loads.
# isort: off
from forgetlab import threads

threads.configure()

from forgetlab.version import __version__  # noqa: E402

# isort: on

# The API loads on first use (PEP 562): `from forgetlab.store import ResultsStore` (a sweep
# worker's results, a store writer) need not import torch, transformers and scikit-learn,
# ~4 s of CPU per process on 2 cores.
PACKAGE_API = (
    "analyze",
    "compare",
    "format_run",
    "hessian",
    "list_methods",
    "load_config",
    "metrics_from_csv",
    "predict_lr",
    "report",
    "run",
    "run_all",
    "run_stacked",
    "sweep",
)


class _Package(types.ModuleType):
    """The import system sets `forgetlab.report` to the `forgetlab.report` package when that
    loads; `forgetlab.report(...)` stays the API's function, as when the API loaded eagerly."""

    def __setattr__(self, name: str, value: object) -> None:
        if name in PACKAGE_API and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str) -> object:
    if name in PACKAGE_API:
        from forgetlab import api

        return getattr(api, name)
    raise AttributeError(f"module 'forgetlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *PACKAGE_API})


__all__ = ["__version__", *PACKAGE_API]
