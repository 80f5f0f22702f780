"""Build: the model a run trains — the pretrained backbone (encoder + heads, or a causal LM),
prepared by the method — and its stage checkpoints. Deterministic given the seed, since
--resume and the analyses of a finished run build it again (through `build_run_model`, the
one way to build a run's model) and load a stage checkpoint onto it."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from forgetlab.atomic import atomic_dir, verify_checksums
from forgetlab.config import Config
from forgetlab.errors import ConfigError, ForgetlabError
from forgetlab.methods import Method, MethodConfig, get_method, method_config
from forgetlab.methods.base import Calibration, load_heads, sample_calibration, save_heads
from forgetlab.models import (
    CausalTaskModel,
    TaskModel,
    load_backbone,
    load_causal_backbone,
    model_type,
)
from forgetlab.recipe.prepare import PreparedTask, RunTasks
from forgetlab.recipe.probe_head import fit_probe_head
from forgetlab.regularizers import Regularizer
from forgetlab.regularizers.base import STATE_FILE as REG_STATE_FILE
from forgetlab.regularizers.base import load_regularizer_state, save_regularizer_state

log = logging.getLogger("forgetlab")


def build_run_model(
    config: Config, run_tasks: RunTasks, seed: int, *, pad_id: int, device: torch.device | str
) -> TaskModel:
    """The model of `config`'s run for `seed`, before any training: what the run trains and
    what a stage checkpoint of it loads onto (resume, analyses). Every task of the sequence
    gets a head; the source tasks and classification probes get their fixed probe heads."""
    method = get_method(config.method["name"])
    return build_model(
        config,
        run_tasks.tasks,
        method,
        method_config(config.method),
        seed,
        pad_id=pad_id,
        device=device,
        sources=run_tasks.probe_heads,
    )


def build_model(
    config: Config,
    tasks: list[PreparedTask],
    method: Method,
    mcfg: MethodConfig,
    seed: int,
    *,
    pad_id: int | None = None,
    device: torch.device | str = "cpu",
    sources: list[PreparedTask] = (),
) -> TaskModel:
    """The pretrained backbone with the task heads, prepared by `method`; deterministic given
    the seed, since --resume builds it again and loads a checkpoint onto it.

    A method with `needs_calibration` (an init computed from data: LoRA-GA, CorDA, EVA) also
    gets a `Calibration`: `method.calibration_batches` batches of `calibration_batch_size`
    (default: training.batch_size) examples drawn with random.Random(seed) from the training
    split of `method.calibration_task` (default: the first task), collated with `pad_id` on
    `device`, where the init is computed. Other methods are prepared as before.
    """
    if model_type(config.model) == "causal":
        return _build_causal(config, tasks, method, mcfg, seed, pad_id, device)
    backbone, hidden = load_backbone(config.model)
    torch.manual_seed(seed)  # heads and adapter init depend on the seed only
    model = TaskModel(
        backbone,
        hidden,
        {t.name: t.data.num_labels for t in tasks},
        pooling=config.model.pooling,
        head_dropout=config.model.head_dropout,
        shared_head=config.heads == "shared",
        probe_heads={t.name: t.data.num_labels for t in sources},
        head_init=config.model.head_init,
        # HF's classifier init scale: the backbone config's initializer_range (BERT: 0.02)
        init_std=float(getattr(backbone.config, "initializer_range", 0.02)),
    )
    for t in sources:  # before `prepare`: the probe reads the untouched pretrained features
        loss = fit_probe_head(model, t.name, t.kind, t.train, pad_id or 0, device, seed)
        log.info("source task %s: linear probe fitted, train loss %.4f", t.name, loss)
    mcfg = encoder_targets(mcfg, backbone)
    if getattr(method, "needs_calibration", False):
        method.prepare(model, mcfg, calibration(config, tasks, mcfg, seed, pad_id, device))
    else:
        method.prepare(model, mcfg)
    for t in sources:  # probes are the fixed pretrained read-out: never trained or counted
        model.heads[t.name].requires_grad_(False)
    return model


ENCODER_TARGETS = ["query", "value"]  # the LoRA-family default: BERT's attention names
# The same two attention layers under other encoders' names: MPNet (attention.attn.q / .v),
# DistilBERT, BART-style and DeBERTa-v2 encoders.
QUERY_VALUE_NAMES = (
    ["q", "v"],
    ["q_lin", "v_lin"],
    ["q_proj", "v_proj"],
    ["query_proj", "value_proj"],
)


def encoder_targets(mcfg: MethodConfig, backbone: torch.nn.Module) -> MethodConfig:
    """On an encoder whose attention layers are not named query/value, the default
    `target_modules` means its query and value layers under their own names (MPNet: q, v).
    Other models keep the default, and the method's check names their linear layers."""
    if getattr(mcfg, "target_modules", None) != ENCODER_TARGETS:
        return mcfg
    linears = backbone.named_modules()
    names = {n.rsplit(".", 1)[-1] for n, m in linears if isinstance(m, torch.nn.Linear)}
    if set(ENCODER_TARGETS) <= names:
        return mcfg
    for pair in QUERY_VALUE_NAMES:
        if set(pair) <= names:
            log.info("target_modules on this encoder: %s", ", ".join(pair))
            return dataclasses.replace(mcfg, target_modules=list(pair))
    return mcfg


def decoder_targets(mcfg: MethodConfig, backbone: torch.nn.Module) -> MethodConfig:
    """On a decoder, the default `target_modules` (BERT's query, value) means every linear
    layer of attention and MLP (q/k/v/o, gate/up/down for Llama): the studies' advice, and
    what the LoRA-vs-full comparisons used. The output head is never adapted."""
    if getattr(mcfg, "target_modules", None) != ENCODER_TARGETS:
        return mcfg
    linears = {n: m for n, m in backbone.named_modules() if isinstance(m, torch.nn.Linear)}
    if any(n.endswith(".query") for n in linears):
        return mcfg
    head = backbone.get_output_embeddings()
    names = sorted({n.rsplit(".", 1)[-1] for n, m in linears.items() if m is not head})
    log.info("target_modules on this decoder: %s", ", ".join(names))
    return dataclasses.replace(mcfg, target_modules=names)


def _build_causal(config, tasks, method, mcfg, seed, pad_id, device) -> CausalTaskModel:
    """A decoder needs no heads: its next-token head scores every task (and probe)."""
    backbone, hidden = load_causal_backbone(config.model)
    torch.manual_seed(seed)  # adapter init depends on the seed only
    model = CausalTaskModel(backbone, hidden)
    mcfg = decoder_targets(mcfg, backbone)
    if getattr(method, "needs_calibration", False):
        method.prepare(model, mcfg, calibration(config, tasks, mcfg, seed, pad_id, device))
    else:
        method.prepare(model, mcfg)
    return model


def calibration(
    config: Config,
    tasks: list[PreparedTask],
    mcfg: MethodConfig,
    seed: int,
    pad_id: int | None,
    device: torch.device | str,
) -> Calibration:
    """The batches a data-driven init (LoRA-GA, CorDA, EVA) is computed from, drawn with the
    seed so that --resume rebuilds the same init."""
    if pad_id is None:
        raise TypeError(f"build_model: method {mcfg.name} needs calibration data: pass pad_id")
    by_name = {t.name: t for t in tasks}
    name = getattr(mcfg, "calibration_task", None) or tasks[0].name
    if name not in by_name:
        raise ConfigError(
            f"method.calibration_task={name!r} is not a task of this run "
            f"(tasks: {', '.join(by_name)})"
        )
    task = by_name[name]
    return sample_calibration(
        task.train,
        task.kind,
        task.name,
        n_batches=getattr(mcfg, "calibration_batches", 8),
        batch_size=getattr(mcfg, "calibration_batch_size", None) or config.training.batch_size,
        seed=seed,
        pad_id=pad_id,
        device=device,
    )


def save_checkpoint(
    model: TaskModel, method: Method, folder: Path, reg: Regularizer | None = None
) -> None:
    with atomic_dir(folder, checksums=True) as tmp:
        method.save_backbone(model, tmp / "backbone")
        save_heads(model, tmp / "heads.safetensors")
        if reg is not None:  # θ₀, Fishers, curvature: what a resumed run cannot recompute
            save_regularizer_state(reg, tmp / REG_STATE_FILE)


def verify_checkpoint(folder: Path) -> None:
    """A stage checkpoint is there and whole: each file's SHA-256 as recorded when it was
    written (`forgetlab.atomic.atomic_dir`), each safetensors file's header against its size
    (checkpoints from before checksums); ForgetlabError names the folder or the file."""
    if not (folder / "heads.safetensors").is_file():
        raise ForgetlabError(f"checkpoint {folder} is missing or incomplete")
    verify_checksums(folder)
    for path in sorted(folder.rglob("*.safetensors")):  # also what has no checksums.json
        try:
            with safe_open(str(path), framework="pt"):  # reads the header: sizes must add up
                pass
        except (SafetensorError, OSError) as e:
            raise ForgetlabError(f"checkpoint file {path} is damaged (truncated?): {e}") from e


def load_checkpoint(
    model: TaskModel, method: Method, folder: Path, reg: Regularizer | None = None
) -> None:
    """Load a stage checkpoint onto `model` (built by `build_run_model`), checked first; a
    damaged file (truncated, overwritten, another model's) ends in one line naming it."""
    verify_checkpoint(folder)
    try:
        method.load_backbone(model, folder / "backbone")
        load_heads(model, folder / "heads.safetensors")
        if reg is not None:
            load_regularizer_state(reg, folder / REG_STATE_FILE)
    except (SafetensorError, RuntimeError, OSError, ValueError, KeyError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ForgetlabError(f"checkpoint {folder} cannot be loaded (damaged?): {first}") from e
