"""Open a finished run directory for analysis.

An analysis needs the model as it was after any stage. A stage checkpoint holds only what
training changed, so the model after stage k is rebuilt exactly as the run built it — by the
recipe's own `build_run_model`, from the same prepared tasks (sequence, source tasks and
probes) — then the stage-k checkpoint is loaded onto it. Stage 0 is the model before any
training (row 0 of the accuracy matrix): the pretrained backbone with the method's init,
e.g. LoRA with B = 0.

Everything is checked before anything is computed, so a bad run directory ends in one
message and nothing is written into it.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from forgetlab.config import Config
from forgetlab.errors import ForgetlabError
from forgetlab.kinds import KINDS
from forgetlab.methods import get_method
from forgetlab.models import (
    TaskModel,
    load_backbone,
    load_causal_backbone,
    load_tokenizer,
    model_type,
)
from forgetlab.models.device import resolve_device
from forgetlab.recipe.build import build_run_model, load_checkpoint, verify_checkpoint
from forgetlab.recipe.prepare import PreparedTask, RunTasks, pad_token_id, prepare_run
from forgetlab.rundir import RunDir
from forgetlab.version import __version__


def check_run_dir(run_dir: Path) -> dict:
    """The run's metrics.json, after checking that the directory holds a finished run of this
    forgetlab version; raises ForgetlabError saying what is wrong otherwise."""
    return RunDir(run_dir).finished()


@dataclass
class OpenRun:
    """A finished run, ready to rebuild its model at any stage."""

    run_dir: Path
    config: Config
    metrics: dict
    tokenizer: object
    run_tasks: RunTasks
    pad_id: int
    device: torch.device

    @property
    def tasks(self) -> list[PreparedTask]:
        return self.run_tasks.tasks

    @property
    def sources(self) -> list[PreparedTask]:
        return self.run_tasks.sources

    @property
    def probes(self) -> list[PreparedTask]:
        return self.run_tasks.probes

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
        return RunDir(self.run_dir).checkpoint_dir(seed, stage, self.tasks[stage - 1].name)

    def require_checkpoints(self, seed: int, stages: list[int], why: str) -> None:
        """Fail before computing anything when a needed stage checkpoint is absent or
        damaged (its files' checksums)."""
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
        for stage in stages:
            if stage > 0:
                verify_checkpoint(self.checkpoint(seed, stage))

    def model_at(self, seed: int, stage: int, eager: bool = False) -> TaskModel:
        """The model after `stage` (0 = before training), in eval mode on `self.device`."""
        self.require_checkpoints(seed, [stage], f"the model after stage {stage}")
        config = self.config
        if eager:  # double backward (Hessian-vector products) has no fused-attention kernel
            config = dataclasses.replace(
                config, model=dataclasses.replace(config.model, attn_implementation="eager")
            )
        model = build_run_model(
            config, self.run_tasks, seed, pad_id=self.pad_id, device=self.device
        )
        if stage > 0:
            load_checkpoint(model, get_method(config.method["name"]), self.checkpoint(seed, stage))
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


def load_run_config(run_dir: Path, trust_remote_code: bool = False) -> Config:
    return RunDir(run_dir).config(trust_remote_code)


def _open(run_dir: Path, config: Config, metrics: dict, device: str | None) -> OpenRun:
    """Tokenizer and tasks (the same subsamples as the run) for `config`."""
    where = "--device" if device else "training.device"
    placed = resolve_device(device or config.training.device, where)  # before any loading
    tokenizer = load_tokenizer(config.model)
    return OpenRun(
        run_dir=run_dir,
        config=config,
        metrics=metrics,
        tokenizer=tokenizer,
        run_tasks=prepare_run(config, tokenizer),
        pad_id=pad_token_id(tokenizer),
        device=placed,
    )


def open_run(
    run_dir: str | Path, device: str | None = None, trust_remote_code: bool = False
) -> OpenRun:
    """Check `run_dir` and load its config, tokenizer and tasks (same subsamples as the run).
    A run whose config.yaml sets model.trust_remote_code opens only with `trust_remote_code`
    (reading someone else's run never runs model-repo code by itself)."""
    run = RunDir(run_dir)
    metrics = run.finished()
    return _open(run.path, run.config(trust_remote_code), metrics, device)


def open_config(config: Config, device: str | None = None) -> OpenRun:
    """A config that has not run: only stage 0 (the model at init) can be rebuilt. What the
    Hessian at init needs to compare methods before training any of them."""
    metrics = {"seeds": list(config.seeds), "version": __version__}
    return _open(Path(config.output.dir), config, metrics, device)
