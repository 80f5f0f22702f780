"""O-LoRA: orthogonal subspace learning for continual learning (Wang et al., 2023,
"Orthogonal Subspace Learning for Language Model Continual Learning", arXiv:2310.14152).

Each stage (task) gets its own LoRA adapter. The adapters of earlier stages stay active, so
their updates stay in the model, but are frozen; only the newest adapter (and the task heads)
trains. The loss gets a penalty on the overlap between the new adapter's A and the earlier
ones', summed over the adapted layers:

    lambda_orth * sum_layers sum_{i < t} sum_{j,k} |(A_i A_t^T)[j, k]|

(A is r x in, so A_i A_t^T is r x r; zero when the rows of A_t, the input directions the new
update reads, are orthogonal to every earlier adapter's). The absolute values and
`lambda_orth` = 0.5 are those of the authors' code and scripts (github.com/cmnfriend/O-LoRA:
`torch.abs(torch.mm(lora_A, loranew_A.T)).sum()`, `--lamda_1 0.5`); their second term, an L2
norm on the new adapter (`--lamda_2`), is 0 in those scripts and is left out here.

Not to be confused with `olora` (methods/olora.py): OLoRA (Büyükakyüz 2024) is one adapter
initialised from a QR decomposition of W; O-LoRA is one adapter per task kept orthogonal to
the earlier ones.

Adapters and checkpoints: stage 1's adapter is PEFT's "default" (what `get_peft_model`
creates: a stage-1 checkpoint is a plain LoRA adapter), stage k's is "stage_k". A stage-k
checkpoint holds all k: PEFT's layout, "default" in the folder itself and "stage_k" in its
subfolder `stage_k/`. To use one outside forgetlab: `PeftModel.from_pretrained(base, path)`,
`load_adapter(path / "stage_k", "stage_k")` for each k, then
`model.base_model.set_adapter(["default", "stage_2", ...])`.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from forgetlab.errors import ConfigError, ForgetlabError
from forgetlab.methods.lora import ADAPTER, Lora, LoraMethodConfig
from forgetlab.models.task_model import TaskModel

ADAPTER_FILE = "adapter_model.safetensors"
_STAGE_FOLDER = re.compile(r"stage_(\d+)")
_LORA_A = re.compile(r"(.+)\.lora_A\.([^.]+)\.weight")  # (layer, adapter)


@dataclass
class OLoraConfig(LoraMethodConfig):
    # the weight of the overlap penalty (the authors' lamda_1; 0: independent adapters)
    lambda_orth: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.lambda_orth >= 0:
            raise ConfigError(f"method.lambda_orth={self.lambda_orth} must be >= 0")


def adapter_name(stage: int) -> str:
    """The adapter stage `stage` (1-based) trains."""
    return ADAPTER if stage == 1 else f"stage_{stage}"


def adapters(backbone: nn.Module) -> list[str]:
    """The backbone's adapters, oldest first (the order they were added)."""
    return list(backbone.peft_config)


def activate(backbone: nn.Module, names: list[str], trainable: str) -> None:
    """Make every adapter in `names` active (all their updates apply) and only `trainable`
    trainable: PEFT's multi-adapter `set_adapter` marks all of them trainable."""
    from peft.tuners.tuners_utils import set_requires_grad

    backbone.base_model.set_adapter(names)
    frozen = [n for n in names if n != trainable]
    if frozen:
        set_requires_grad(backbone.base_model.model, frozen, requires_grad=False)


def overlap_penalty(params: Mapping[str, torch.Tensor], new: str, old: list[str]) -> torch.Tensor:
    """sum over layers and earlier adapters of sum |A_old A_new^T|, from `params` (parameter
    names -> tensors: a model's own, or a stacked trial's slices), in float32 (outside any
    autocast: a bf16 product of these small entries would round most of them away)."""
    by_layer: dict[str, dict[str, torch.Tensor]] = {}  # in the model's order of layers
    for name, p in params.items():
        if m := _LORA_A.fullmatch(name):
            by_layer.setdefault(m.group(1), {})[m.group(2)] = p
    terms = []
    device = next(iter(params.values())).device.type
    with torch.autocast(device_type=device, enabled=False):
        for a in by_layer.values():
            earlier = [a[n].float() for n in old if n in a]
            if new not in a or not earlier:
                continue
            # The earlier A's stacked: one product gives every (old adapter, row) pair.
            terms.append((torch.cat(earlier) @ a[new].float().T).abs().sum())
    return torch.stack(terms).sum()


class OLora(Lora):
    name = "o_lora"
    summary = (
        "a new LoRA per task, earlier ones frozen and kept; penalty on the new A's overlap "
        "with the earlier A's (O-LoRA)"
    )
    reference = "Wang et al. 2023, arXiv:2310.14152"
    config_cls = OLoraConfig
    # Stacks: the stack is built anew at each stage, after each trial's `on_stage_start`
    # added its adapter, and the penalty reads each trial's slices (`penalty_of`).
    stackable = True

    def on_stage_start(self, model: TaskModel, cfg: OLoraConfig, stage: int, task: str) -> None:
        backbone = model.backbone
        names = adapters(backbone)
        in_order = names == [adapter_name(s) for s in range(1, len(names) + 1)]
        if not in_order or len(names) not in (stage - 1, stage):
            raise ForgetlabError(
                f"o_lora: stage {stage} needs the adapters of stages 1..{stage - 1}, but the "
                f"model holds {names} (load the stage {stage - 1} checkpoint first)"
            )
        if len(names) == stage - 1:  # drawn after train_stage's set_seed: fixed by the stage
            names.append(adapter_name(stage))
            backbone.add_adapter(names[-1], copy.deepcopy(backbone.peft_config[ADAPTER]))
        activate(backbone, names, trainable=names[-1])

    def penalty(self, model: TaskModel, cfg: OLoraConfig) -> torch.Tensor | None:
        return self.penalty_of(dict(model.named_parameters()), model, cfg)

    def penalty_of(
        self, params: Mapping[str, torch.Tensor], model: TaskModel, cfg: OLoraConfig
    ) -> torch.Tensor | None:
        names = adapters(model.backbone)
        if len(names) < 2 or cfg.lambda_orth == 0:
            return None
        return cfg.lambda_orth * overlap_penalty(params, names[-1], names[:-1])

    def load_backbone(self, model: TaskModel, path: Path) -> None:
        """Rebuild the checkpoint's adapters ("default" and every `stage_k/`) on a model that
        holds stage 1's only (a freshly prepared one): all active, the newest trainable, as
        at the end of the stage that saved them (what the analyses of "trainable" parameters
        see); the next stage's `on_stage_start` adds its own and freezes the rest."""
        from peft import set_peft_model_state_dict

        stages = sorted(
            int(m.group(1)) for d in path.iterdir() if (m := _STAGE_FOLDER.fullmatch(d.name))
        )
        if stages != list(range(2, len(stages) + 2)) or not (path / ADAPTER_FILE).is_file():
            raise ForgetlabError(
                f"o_lora checkpoint {path} needs {ADAPTER_FILE} and stage_2/ .. stage_k/ "
                f"folders without gaps (found stages {stages})"
            )
        names = [ADAPTER] + [adapter_name(s) for s in stages]
        backbone = model.backbone
        if adapters(backbone) != [ADAPTER]:
            raise ForgetlabError(
                f"o_lora checkpoint {path} loads onto a freshly prepared model (one adapter); "
                f"this one holds {adapters(backbone)}"
            )
        for name in names:
            if name != ADAPTER:
                backbone.add_adapter(name, copy.deepcopy(backbone.peft_config[ADAPTER]))
            folder = path if name == ADAPTER else path / name
            file = folder / ADAPTER_FILE
            if not file.is_file():
                raise ForgetlabError(f"o_lora checkpoint {path} has no {file.relative_to(path)}")
            result = set_peft_model_state_dict(backbone, load_file(str(file)), adapter_name=name)
            unloaded = [k for k in result.missing_keys if f".{name}." in k and "lora_" in k]
            if result.unexpected_keys or unloaded:
                raise ForgetlabError(f"o_lora checkpoint {folder} does not match the model")
        activate(backbone, names, trainable=names[-1])
