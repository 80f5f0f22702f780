"""Open a finished run directory for analysis.

An analysis needs the model as it was after any stage. The runner builds a model
deterministically from (config, seed) and a stage checkpoint holds only what training changed,
so the model after stage k is rebuilt here exactly as the runner built it, then the stage-k
checkpoint is loaded onto it. Stage 0 is the model before any training (row 0 of the accuracy
matrix): the pretrained backbone with the method's init, e.g. LoRA with B = 0.

Everything is checked before anything is computed, so a bad run directory ends in one
message and nothing is written into it.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

import forgetlab
from forgetlab.atomic import read_json
from forgetlab.build import build_model, load_checkpoint, stage_dir
from forgetlab.config import Config
from forgetlab.errors import ConfigError, ForgetlabError
from forgetlab.kinds import KINDS
from forgetlab.methods import get_method, method_config
from forgetlab.models import (
    TaskModel,
    load_backbone,
    load_causal_backbone,
    load_tokenizer,
    model_type,
)
from forgetlab.prepare import PreparedTask, prepare_tasks

# A run written by another major.minor version may have another layout or other numbers.
REQUIRED_METRICS = ("version", "tasks", "seeds", "accuracy_matrix", "per_seed")


def _major_minor(version: str) -> tuple[str, ...]:
    return tuple(str(version).split(".")[:2])


def check_run_dir(run_dir: Path) -> dict:
    """The run's metrics.json, after checking that the directory holds a finished run of this
    forgetlab version; raises ForgetlabError saying what is wrong otherwise."""
    if not run_dir.is_dir():
        raise ForgetlabError(f"{run_dir} is not a directory")
    if not (run_dir / "config.yaml").is_file():
        raise ForgetlabError(f"{run_dir} is not a forgetlab run directory (no config.yaml)")
    if not (run_dir / "metrics.json").is_file():
        raise ForgetlabError(
            f"{run_dir} holds an incomplete run (no metrics.json): finish it with "
            f"`forgetlab run <config> --out {run_dir} --resume` first"
        )
    metrics = read_json(run_dir / "metrics.json")
    missing = [k for k in REQUIRED_METRICS if k not in metrics]
    if missing:
        raise ForgetlabError(
            f"{run_dir}/metrics.json lacks {', '.join(missing)}: written by another version of "
            "forgetlab, or damaged"
        )
    if _major_minor(metrics["version"]) != _major_minor(forgetlab.__version__):
        raise ForgetlabError(
            f"{run_dir} was written by forgetlab {metrics['version']}; this is "
            f"{forgetlab.__version__}: rerun it with this version to analyse it"
        )
    incomplete = [s for s, m in metrics["per_seed"].items() if not m.get("complete")]
    if incomplete:
        raise ForgetlabError(f"{run_dir}: seed(s) {', '.join(incomplete)} did not finish")
    return metrics


@dataclass
class OpenRun:
    """A finished run, ready to rebuild its model at any stage."""

    run_dir: Path
    config: Config
    metrics: dict
    tokenizer: object
    tasks: list[PreparedTask]
    sources: list[PreparedTask]
    pad_id: int
    device: torch.device

    @property
    def is_causal(self) -> bool:
        return model_type(self.config.model) == "causal"

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def seed(self, seed: int | None = None) -> int:
        seeds = [int(s) for s in self.metrics["seeds"]]
        if seed is None:
            return seeds[0]
        if seed not in seeds:
            raise ForgetlabError(f"{self.run_dir} has no seed {seed} (seeds: {seeds})")
        return seed

    def checkpoint(self, seed: int, stage: int) -> Path:
        return stage_dir(self.run_dir / f"seed-{seed}", stage, self.tasks[stage - 1].name)

    def require_checkpoints(self, seed: int, stages: list[int], why: str) -> None:
        """Fail before computing anything when a needed stage checkpoint is absent."""
        if any(s < 0 or s > len(self.tasks) for s in stages):
            raise ForgetlabError(
                f"stage must be 0 (before training) .. {len(self.tasks)}; got {stages}"
            )
        missing = [s for s in stages if s > 0 and not self.checkpoint(seed, s).is_dir()]
        if missing:
            names = ", ".join(f"{s} ({self.tasks[s - 1].name})" for s in missing)
            raise ForgetlabError(
                f"{self.run_dir} seed {seed} has no checkpoint for stage {names}, which {why} "
                f"needs (output.checkpoints was {self.config.output.checkpoints!r}; rerun with "
                "output.checkpoints=all)"
            )

    def model_at(self, seed: int, stage: int, eager: bool = False) -> TaskModel:
        """The model after `stage` (0 = before training), in eval mode on `self.device`."""
        self.require_checkpoints(seed, [stage], f"the model after stage {stage}")
        config = self.config
        if eager:  # double backward (Hessian-vector products) has no fused-attention kernel
            config = dataclasses.replace(
                config, model=dataclasses.replace(config.model, attn_implementation="eager")
            )
        method = get_method(config.method["name"])
        mcfg = method_config(config.method)
        model = build_model(
            config,
            self.tasks,
            method,
            mcfg,
            seed,
            pad_id=self.pad_id,
            device=self.device,
            sources=self.sources,
        )
        if stage > 0:
            load_checkpoint(model, method, self.checkpoint(seed, stage))
        return model.to(self.device).eval()

    def pretrained_backbone(self) -> torch.nn.Module:
        """The backbone exactly as published: what ΔW is measured from."""
        load = load_causal_backbone if self.is_causal else load_backbone
        backbone, _ = load(self.config.model)
        return backbone.to(self.device).eval()

    def probe_batches(
        self, task: PreparedTask, n: int, batch_size: int, split: str = "eval", seed: int = 0
    ) -> list[dict]:
        """A fixed sample of `n` examples of one task (the same for every stage and run with
        the same seed), collated into batches on the device."""
        data = task.eval if split == "eval" else task.train
        indices = sorted(random.Random(seed).sample(range(len(data)), min(n, len(data))))
        ops = KINDS[task.kind]
        return [
            ops.collate(data, indices[i : i + batch_size], self.pad_id, self.device)
            for i in range(0, len(indices), batch_size)
        ]


def _device(name: str | None) -> torch.device:
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_run_config(run_dir: Path) -> Config:
    from forgetlab.api import load_config  # the api validates method and regulariser keys

    try:
        return load_config(raw=yaml.safe_load((run_dir / "config.yaml").read_text()) or {})
    except ConfigError as e:
        raise ForgetlabError(
            f"{run_dir}/config.yaml is not a valid config for this forgetlab version: {e}"
        ) from e


def _open(run_dir: Path, config: Config, metrics: dict, device: str | None) -> OpenRun:
    """Tokenizer and tasks (the same subsamples as the run) for `config`."""
    tokenizer = load_tokenizer(config.model)
    return OpenRun(
        run_dir=run_dir,
        config=config,
        metrics=metrics,
        tokenizer=tokenizer,
        tasks=prepare_tasks(config, tokenizer),
        sources=prepare_tasks(config, tokenizer, config.source_tasks, offset=100),
        pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
        device=_device(device or config.training.device),
    )


def open_run(run_dir: str | Path, device: str | None = None) -> OpenRun:
    """Check `run_dir` and load its config, tokenizer and tasks (same subsamples as the run)."""
    run_dir = Path(run_dir)
    metrics = check_run_dir(run_dir)
    return _open(run_dir, load_run_config(run_dir), metrics, device)


def open_config(config: Config, device: str | None = None) -> OpenRun:
    """A config that has not run: only stage 0 (the model at init) can be rebuilt. What the
    Hessian at init needs to compare methods before training any of them."""
    metrics = {"seeds": list(config.seeds), "version": forgetlab.__version__}
    return _open(Path(config.output.dir), config, metrics, device)
