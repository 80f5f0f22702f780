"""What an analysis module declares besides its computation: the command-line options that
set its options, and its report figure with the words around it."""

from __future__ import annotations

from dataclasses import dataclass

# predict-lr's definitions of "the largest eigenvalue at init" (forgetlab.analyses.predict_lr):
# here, so that the CLI's parser lists them without loading the training stack
LR_DEFINITIONS = ("module", "trainable", "warmup")


@dataclass(frozen=True)
class CliOption:
    """A command-line option that sets the analysis option `key` (one of its DEFAULTS).
    Analyses that list the same `flag` share its value, so they give it the same type and
    help; `help` is the text without the analysis names, which the CLI adds."""

    flag: str
    key: str
    type: type | None = None
    help: str | None = None
    metavar: str | None = None
    choices: tuple[str, ...] | None = None

    @property
    def dest(self) -> str:
        """The argparse attribute the option is read from (`--batch-size` → batch_size)."""
        return self.flag.lstrip("-").replace("-", "_")


@dataclass(frozen=True)
class FigureContext:
    """What an analysis figure needs to know about the run it belongs to."""

    run_name: str
    stem: str  # the result file's stem, e.g. "cka" or "hessian-stage3-encoder"
    all_accuracy: bool  # every task is scored by accuracy (else by scores such as −NLL)


@dataclass(frozen=True)
class AnalysisFigure:
    alt: str
    caption: str
    png: bytes
