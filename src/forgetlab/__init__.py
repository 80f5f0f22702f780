"""forgetlab: fine-tune pretrained language models and measure what each method learns and
what it forgets.

    import forgetlab
    cfg = forgetlab.load_config("configs/quickstart.yaml", ["method.name=lora"])
    result = forgetlab.run(cfg)
    print(forgetlab.format_run(result.metrics))
"""

# Before anything imports torch: OpenMP reads its wait policy once, when torch loads.
# isort: off
from forgetlab import threads

threads.configure()

from forgetlab.api import (  # noqa: E402
    analyze,
    compare,
    format_run,
    hessian,
    list_methods,
    load_config,
    metrics_from_csv,
    predict_lr,
    report,
    run,
    run_all,
    run_stacked,
    sweep,
)
from forgetlab.version import __version__  # noqa: E402

# isort: on

__all__ = [
    "__version__",
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
]
