"""LoRA+ (Hayou, Ghosh & Yu, 2024, "LoRA+: Efficient Low Rank Adaptation of Large Models",
arXiv:2402.12354): B learns `loraplus_lr_ratio` times faster than A.

With one learning rate for A and B, feature learning is inefficient at large width; LoRA+
gives B the larger rate (the paper's advice: ratio ≈ 16, tune it). This is an optimizer change
only: the layers, the init and the checkpoints are plain LoRA. Only the `lora_B` matrices get
the larger rate; everything else (A, the heads) keeps `training.lr`. (PEFT's
`create_loraplus_optimizer` also puts every 1-D parameter, e.g. the heads' biases, in B's
group; we keep the heads at the base rate so that changing the ratio changes only the adapter.)
The ratio applies on top of the schedule: warmup and decay scale both rates alike.
"""

from __future__ import annotations

from dataclasses import dataclass

from forgetlab.errors import ConfigError
from forgetlab.methods.base import NO_DECAY
from forgetlab.methods.lora import Lora, LoraMethodConfig
from forgetlab.models.task_model import TaskModel


@dataclass
class LoraPlusConfig(LoraMethodConfig):
    loraplus_lr_ratio: float = 16.0  # lr(B) / lr(A); the paper's default recommendation

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.loraplus_lr_ratio > 0:
            raise ConfigError(
                f"method.loraplus_lr_ratio={self.loraplus_lr_ratio} must be > 0 "
                "(the paper uses ratios >= 1, typically 16)"
            )


class LoraPlus(Lora):
    name = "loraplus"
    summary = "LoRA whose B matrices get a larger learning rate (x loraplus_lr_ratio)"
    reference = "Hayou, Ghosh & Yu 2024, arXiv:2402.12354"
    config_cls = LoraPlusConfig
    # an optimizer change: the forward is plain LoRA, and a stack's optimizer takes each
    # trial's groups from `optimizer_groups` (B at lr x ratio), the ratio the same in a stack
    stackable = True

    def optimizer_groups(
        self, model: TaskModel, cfg: LoraPlusConfig, lr: float, weight_decay: float
    ) -> list[dict]:
        # (fast, decay) -> parameters; fixed order so the optimizer state is reproducible.
        buckets: dict[tuple[bool, bool], list] = {
            (False, True): [],
            (False, False): [],
            (True, True): [],
            (True, False): [],
        }
        for name, p in model.named_parameters():
            if p.requires_grad:
                fast = "lora_B" in name
                decay = not any(k in name for k in NO_DECAY)
                buckets[(fast, decay)].append(p)
        return [
            {
                "params": params,
                "lr": lr * cfg.loraplus_lr_ratio if fast else lr,
                "weight_decay": weight_decay if decay else 0.0,
            }
            for (fast, decay), params in buckets.items()
        ]
