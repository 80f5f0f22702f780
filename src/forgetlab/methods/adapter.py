"""Bottleneck adapters (Houlsby et al., 2019, "Parameter-Efficient Transfer Learning for NLP",
arXiv:1902.00751; Pfeiffer et al., 2020, "AdapterFusion: Non-Destructive Task Composition for
Transfer Learning", arXiv:2005.00247), written here: the `adapters` package pins a
transformers release this stack cannot use.

An adapter is a small residual MLP, h + up(act(down(h))), with down: hidden -> hidden //
reduction_factor and up back to hidden. It is applied to the output of a layer's projection,
before the block's dropout, residual add and LayerNorm (BERT's `attention.output.dense` and
`output.dense`; Llama's `self_attn.o_proj` and `mlp.down_proj`):

- `houlsby`: one adapter after the attention output projection and one after the FFN output
  projection of every layer;
- `pfeiffer`: one after the FFN output projection only.

The up-projection starts at zero, so the adapted model computes exactly the pretrained one at
step 0 (the runner's row 0 is the untouched model). The backbone's weights are frozen (Houlsby
et al. also trained the LayerNorms; here they stay frozen, like every other pretrained weight);
only the adapters and the task heads train.

Each adapter is a child module `bottleneck_adapter` of the projection it follows and runs from
a forward hook on that projection, so every pretrained weight keeps its name (`...dense.weight`)
and the adapter's weights are `...dense.bottleneck_adapter.{down,up}.{weight,bias}`.
Checkpoints are a safetensors file of the adapter weights plus a JSON file of the settings and
the adapted modules; `load_adapters(base_backbone, folder)` puts them on a plain pretrained model.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from forgetlab.config import from_dict
from forgetlab.errors import ConfigError, ForgetlabError
from forgetlab.methods.base import Method, MethodConfig
from forgetlab.models.task_model import TaskModel

STYLES = ("houlsby", "pfeiffer")
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "silu": nn.SiLU,
}
# Where each style puts an adapter: after the attention and/or the FFN output projection.
POSITIONS = {"houlsby": ("attention", "ffn"), "pfeiffer": ("ffn",)}

# (attention output projection, FFN output projection), named relative to a numbered layer.
LAYOUTS: dict[str, tuple[str, str]] = {
    "BERT/RoBERTa/MiniLM": ("attention.output.dense", "output.dense"),
    "MPNet": ("attention.attn.o", "output.dense"),
    "DistilBERT": ("attention.out_lin", "ffn.lin2"),
    "Llama/Mistral/Qwen2": ("self_attn.o_proj", "mlp.down_proj"),
}
# `encoder.layer.3.<rest>` (BERT), `model.layers.3.<rest>` (Llama), `transformer.layer.3.` ...
LAYER = re.compile(r"^(?:.+\.)?(?:layer|layers)\.(?P<index>\d+)\.(?P<rest>.+)$")

CHILD = "bottleneck_adapter"  # the attribute of the projection that holds its adapter
SETTINGS = "_forgetlab_adapter_config"  # the attribute of the backbone that holds the config
WEIGHTS_FILE = "bottleneck_adapters.safetensors"
CONFIG_FILE = "bottleneck_adapters.json"
FORMAT = "forgetlab-bottleneck-adapters"


@dataclass
class AdapterMethodConfig(MethodConfig):
    style: str = "houlsby"  # houlsby: after attention and FFN; pfeiffer: after the FFN only
    reduction_factor: int = 16  # bottleneck size = hidden // reduction_factor
    activation: str = "relu"
    layers: list[int] | None = None  # layer indices to adapt; null: every layer
    init_std: float = 0.02  # the down-projection's normal init (the up-projection starts at 0)

    def __post_init__(self) -> None:
        if self.style not in STYLES:
            raise ConfigError(f"method.style={self.style!r} must be one of {', '.join(STYLES)}")
        if self.reduction_factor < 1:
            raise ConfigError(f"method.reduction_factor={self.reduction_factor} must be >= 1")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(
                f"method.activation={self.activation!r} must be one of {', '.join(ACTIVATIONS)}"
            )
        if self.layers is not None:
            if not self.layers:
                raise ConfigError("method.layers is empty (null adapts every layer)")
            if min(self.layers) < 0 or len(set(self.layers)) != len(self.layers):
                raise ConfigError(
                    f"method.layers={self.layers} must be distinct layer indices >= 0"
                )
        if not self.init_std > 0:
            raise ConfigError(f"method.init_std={self.init_std} must be > 0")


class BottleneckAdapter(nn.Module):
    """up(act(down(h))): what is added to h. Zero at init (up's weight and bias are zero)."""

    def __init__(self, hidden: int, bottleneck: int, activation: str, init_std: float) -> None:
        super().__init__()
        self.down = nn.Linear(hidden, bottleneck)
        self.act = ACTIVATIONS[activation]()
        self.up = nn.Linear(bottleneck, hidden)
        with torch.no_grad():
            self.down.weight.normal_(0.0, init_std)
            self.down.bias.zero_()
            self.up.weight.zero_()
            self.up.bias.zero_()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down(h)))


def _add_adapter(projection: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
    """The forward hook on an adapted projection: its output h becomes h + adapter(h).

    A module-level function that finds the adapter on the module it is called with, so that a
    deep copy of the model (analyses copy layers) runs the copy's own adapter."""
    return output + getattr(projection, CHILD)(output)


def projections(backbone: nn.Module, cfg: AdapterMethodConfig) -> dict[str, nn.Linear]:
    """The projections `cfg` adapts (name -> linear layer), in the model's order.

    The layout is the first of `LAYOUTS` whose attention and FFN output projections both exist
    in some numbered layer; ForgetlabError when none does, ConfigError for `method.layers`
    beyond the model's layers."""
    linears = {n: m for n, m in backbone.named_modules() if isinstance(m, nn.Linear)}
    for attention, ffn in LAYOUTS.values():
        found: dict[int, dict[str, str]] = {}
        for name in linears:
            match = LAYER.match(name)
            if match and match["rest"] in (attention, ffn):
                position = "attention" if match["rest"] == attention else "ffn"
                found.setdefault(int(match["index"]), {})[position] = name
        layers = {i: names for i, names in found.items() if len(names) == 2}
        if layers:
            break
    else:
        first = sorted(n for n in linears if (m := LAYER.match(n)) and m["index"] == "0")
        known = "; ".join(f"{k}: {a}, {f}" for k, (a, f) in LAYOUTS.items())
        raise ForgetlabError(
            f"method adapter: found no attention and FFN output projections in "
            f"{type(backbone).__name__} (known layouts: {known}; this model's layer-0 linear "
            f"layers: {', '.join(first) or 'none'})"
        )
    n_layers = max(layers) + 1
    if cfg.layers is not None and max(cfg.layers) >= n_layers:
        raise ConfigError(f"method.layers={cfg.layers} but the model has {n_layers} layers")
    chosen = set(range(n_layers) if cfg.layers is None else cfg.layers) & set(layers)
    names = {layers[i][p] for i in chosen for p in POSITIONS[cfg.style]}
    return {n: m for n, m in linears.items() if n in names}


def adapters(backbone: nn.Module) -> dict[str, BottleneckAdapter]:
    """The adapters on a backbone, keyed by the name of the projection they follow."""
    return {
        name: getattr(module, CHILD)
        for name, module in backbone.named_modules()
        if isinstance(getattr(module, CHILD, None), BottleneckAdapter)
    }


def attach_adapters(backbone: nn.Module, cfg: AdapterMethodConfig) -> dict[str, nn.Linear]:
    """Freeze the backbone and add a trainable adapter after each projection `cfg` names,
    drawn from torch's RNG in the model's module order; returns the adapted projections."""
    if adapters(backbone):
        raise ForgetlabError("method adapter: this backbone already has bottleneck adapters")
    targets = projections(backbone, cfg)
    for p in backbone.parameters():
        p.requires_grad_(False)
    for name, projection in targets.items():
        hidden = projection.out_features
        bottleneck = hidden // cfg.reduction_factor
        if bottleneck < 1:
            raise ConfigError(
                f"method.reduction_factor={cfg.reduction_factor} leaves no bottleneck for "
                f"{name} (hidden size {hidden})"
            )
        adapter = BottleneckAdapter(hidden, bottleneck, cfg.activation, cfg.init_std)
        weight = projection.weight
        setattr(projection, CHILD, adapter.to(device=weight.device, dtype=weight.dtype))
        projection.register_forward_hook(_add_adapter)
    setattr(backbone, SETTINGS, cfg)  # what `save_adapters` writes beside the weights
    return targets


def save_adapters(backbone: nn.Module, folder: Path) -> None:
    """Write the adapters' weights (safetensors) and the settings + adapted modules (JSON)."""
    found, cfg = adapters(backbone), getattr(backbone, SETTINGS, None)
    if not found or cfg is None:
        raise ForgetlabError("method adapter: the model has no bottleneck adapters to save")
    folder.mkdir(parents=True, exist_ok=True)
    state = {
        f"{name}.{key}": value.detach().contiguous()
        for name, adapter in found.items()
        for key, value in adapter.state_dict().items()
    }
    save_file(state, str(folder / WEIGHTS_FILE))
    meta = {"format": FORMAT, "config": asdict(cfg), "modules": list(found)}
    (folder / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")


def _read(folder: Path) -> tuple[AdapterMethodConfig, list[str], dict[str, torch.Tensor]]:
    weights, meta_file = folder / WEIGHTS_FILE, folder / CONFIG_FILE
    if not weights.is_file() or not meta_file.is_file():
        raise ForgetlabError(f"adapter checkpoint {folder} has no {WEIGHTS_FILE} + {CONFIG_FILE}")
    meta = json.loads(meta_file.read_text())
    if meta.get("format") != FORMAT:
        raise ForgetlabError(f"{meta_file} is not a {FORMAT} file")
    cfg = from_dict(AdapterMethodConfig, meta.get("config"), str(meta_file))
    return cfg, meta["modules"], load_file(str(weights))


def load_adapters(backbone: nn.Module, folder: Path) -> nn.Module:
    """Restore saved adapters onto `backbone`: a plain pretrained model (they are attached
    with the saved settings first) or one already prepared with the same settings (--resume).
    The backbone ends frozen, its adapters trainable; returned for convenience."""
    cfg, modules, state = _read(Path(folder))
    if not adapters(backbone):
        attach_adapters(backbone, cfg)
    found, settings = adapters(backbone), getattr(backbone, SETTINGS, None)
    if settings is not None and settings != cfg:
        raise ForgetlabError(
            f"adapter checkpoint {folder} was saved with other settings ({asdict(cfg)}) than "
            f"this model's adapters ({asdict(settings)})"
        )
    if list(found) != modules:
        raise ForgetlabError(
            f"adapter checkpoint {folder} adapts other modules than this model "
            f"({len(modules)} saved, {len(found)} here: style, layers or model differ)"
        )
    used = 0
    for name, adapter in found.items():
        prefix = f"{name}."
        own = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
        used += len(own)
        try:
            adapter.load_state_dict(own)
        except RuntimeError as e:  # missing keys or other shapes: another reduction factor
            raise ForgetlabError(
                f"adapter checkpoint {folder} does not match this model's adapter on {name} "
                f"({' '.join(str(e).split())})"
            ) from e
    if used != len(state):
        raise ForgetlabError(f"adapter checkpoint {folder} holds weights of no adapted module")
    return backbone


class Adapter(Method):
    name = "adapter"
    # its adapters' down and up are nn.Linear (stacked); the forward hook finds the adapter
    # on the module it is called with, the stack's
    stackable = True
    summary = "bottleneck adapters after attention+FFN (houlsby) or the FFN (pfeiffer); base frozen"
    reference = "Houlsby et al. 2019, arXiv:1902.00751; Pfeiffer et al. 2020, arXiv:2005.00247"
    config_cls = AdapterMethodConfig

    def prepare(self, model: TaskModel, cfg: AdapterMethodConfig) -> None:
        attach_adapters(model.backbone, cfg)
        for p in model.heads.parameters():
            p.requires_grad_(True)

    def save_backbone(self, model: TaskModel, path: Path) -> None:
        save_adapters(model.backbone, path)

    def load_backbone(self, model: TaskModel, path: Path) -> None:
        load_adapters(model.backbone, path)
