"""The frozen bottom of a partially frozen encoder: pinned to eval mode, and computed once per
example (`freeze`'s `frozen_dropout: false` and `cache_frozen: true`).

Under `freeze` the embeddings and the lower layers never change, so their output for an
example is the same at every epoch, stage and evaluation, provided they run without dropout.
`FrozenBottomCache` takes the place of the backbone's `forward` on the instance: each row's
hidden state entering the first trainable layer is looked up by the row's tokens (and the
autocast in force). A batch of rows not seen yet runs the backbone whole and keeps them on the
way; the rows missing from a batch otherwise are computed by the backbone itself, on those rows
alone, up to that layer. The rows are padded again to the batch's width, and the backbone's
own forward then runs with its embeddings module answering with them and its layer list cut
to the trainable layers. Padded positions get zeros instead of the bottom's values there: every
real token masks them out as keys, so real tokens' outputs and the gradients do not change.

Not a plug-in: `methods/freeze.py` uses it (the plug-ins never import each other).
"""

from __future__ import annotations

import re

import torch
from torch import nn

from forgetlab.errors import ForgetlabError

# The only inputs a cached call takes; any other (output_hidden_states, inputs_embeds, ...)
# runs the backbone whole, as if there were no cache.
CACHED_INPUTS = frozenset({"input_ids", "attention_mask", "token_type_ids"})


def frozen_modules(root: nn.Module) -> list[nn.Module]:
    """The largest submodules of `root` whose parameters are all frozen (at least one)."""
    found: list[nn.Module] = []

    def walk(module: nn.Module) -> None:
        params = list(module.parameters())
        if params and not any(p.requires_grad for p in params):
            found.append(module)
            return
        for child in module.children():
            walk(child)

    walk(root)
    return found


def _eval_before_forward(module: nn.Module, args: tuple) -> None:
    module.train(False)  # model.train() set it back to train mode; dropout stays off


def pin_eval(modules: list[nn.Module]) -> None:
    """Run `modules` in eval mode whatever mode their model is in: a forward pre-hook (which a
    deepcopy of the model keeps, and checkpoints never see)."""
    for module in modules:
        module.register_forward_pre_hook(_eval_before_forward)


class _Captured(Exception):
    """Ends a forward at the first trainable layer, carrying the hidden states it got."""

    def __init__(self, hidden: torch.Tensor) -> None:
        super().__init__()
        self.hidden = hidden


def _capture_input(module: nn.Module, args: tuple, kwargs: dict) -> None:
    raise _Captured(args[0] if args else kwargs["hidden_states"])


def _capture_output(module: nn.Module, args: tuple, output) -> None:
    raise _Captured(output[0] if isinstance(output, tuple) else output)


class _Replay(nn.Module):
    """Stands in for the embeddings in a cached forward: answers with the cached rows."""

    def __init__(self, hidden: torch.Tensor) -> None:
        super().__init__()
        self.hidden = hidden

    def forward(self, *args, **kwargs) -> torch.Tensor:
        return self.hidden


def _parent(root: nn.Module, path: str) -> tuple[nn.Module, str]:
    parent, _, name = path.rpartition(".")
    return (root.get_submodule(parent) if parent else root), name


def _autocast_key(device: torch.device) -> torch.dtype | None:
    kind = device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else None


class FrozenBottomCache:
    """`backbone.forward` with the frozen bottom (embeddings and layers below
    `first_trainable`) computed once per distinct row; see the module docstring. The cache
    empties itself when a frozen weight is written or moved (a checkpoint load, `.to()`)."""

    def __init__(self, backbone: nn.Module, first_trainable: int, layer_index: re.Pattern) -> None:
        self.backbone = backbone
        self.first = first_trainable
        self.layers_path = _layer_list(backbone, layer_index)
        self.embeddings_path = _embeddings_path(backbone, self.layers_path)
        self.frozen = [p for p in backbone.parameters() if not p.requires_grad]
        self.rows: dict[tuple, torch.Tensor] = {}
        self.stamp = self._stamp()
        self.checked = False  # the first cached call compares itself with the backbone's own
        self.computed = 0  # rows whose bottom was computed (the rest came from the cache)
        self.reused = 0

    def _stamp(self) -> tuple:
        return tuple((p.data_ptr(), p._version, p.dtype) for p in self.frozen)

    def _original(self, *args, **inputs):
        return type(self.backbone).forward(self.backbone, *args, **inputs)

    def __call__(self, *args, **inputs):
        mask, ids = inputs.get("attention_mask"), inputs.get("input_ids")
        if args or not set(inputs) <= CACHED_INPUTS or mask is None or ids is None:
            return self._original(*args, **inputs)
        lengths = mask.sum(1)
        positions = torch.arange(mask.shape[1], device=mask.device)
        if not bool((mask.bool() == (positions < lengths[:, None])).all()):
            return self._original(**inputs)  # left padding or holes: positions would differ
        stamp = self._stamp()
        if stamp != self.stamp:
            self.rows.clear()
            self.stamp = stamp
        n = lengths.tolist()
        keys = self._keys(inputs, n)
        missing = [i for i, key in enumerate(keys) if key not in self.rows]
        if len(missing) == len(keys):  # a new batch (a first epoch): one pass, kept on the way
            return self._record(inputs, keys, n)
        if missing:
            self._fill(inputs, keys, n, missing)
        self.reused += len(keys) - len(missing)
        stored = [self.rows[key] for key in keys]
        hidden = stored[0].new_zeros(len(keys), mask.shape[1], stored[0].shape[-1])
        for row, (value, length) in enumerate(zip(stored, n)):
            hidden[row, :length] = value
        if not self.checked:
            self._check(inputs, hidden)
        return self._top(inputs, hidden)

    def _keys(self, inputs: dict, n: list[int]) -> list[tuple]:
        autocast = _autocast_key(inputs["input_ids"].device)
        ids = inputs["input_ids"].cpu().numpy()
        types = inputs.get("token_type_ids")
        types = types.cpu().numpy() if types is not None else None
        return [
            (
                autocast,
                ids[i, :length].tobytes(),
                b"" if types is None else types[i, :length].tobytes(),
            )
            for i, length in enumerate(n)
        ]

    def _fill(self, inputs: dict, keys: list[tuple], n: list[int], missing: list[int]) -> None:
        rows = torch.tensor(missing, device=inputs["input_ids"].device)
        width = max(n[i] for i in missing)
        hidden = self._bottom({k: v[rows, :width] for k, v in inputs.items()})
        for j, i in enumerate(missing):
            self.rows[keys[i]] = hidden[j, : n[i]].clone()  # a copy: not a view of the batch
        self.computed += len(missing)

    def _record(self, inputs: dict, keys: list[tuple], n: list[int]):
        """The backbone's own forward, keeping every row's input to the first trainable layer
        (the last layer's output when none trains) as it passes."""
        layers = self.backbone.get_submodule(self.layers_path)
        seen: list[torch.Tensor] = []
        if self.first < len(layers):

            def keep(module, args, kwargs):
                seen.append(args[0] if args else kwargs["hidden_states"])

            handle = layers[self.first].register_forward_pre_hook(keep, with_kwargs=True)
        else:

            def keep(module, args, output):
                seen.append(output[0] if isinstance(output, tuple) else output)

            handle = layers[-1].register_forward_hook(keep)
        try:
            out = self._original(**inputs)
        finally:
            handle.remove()
        hidden = seen[0].detach()
        for i, key in enumerate(keys):
            self.rows[key] = hidden[i, : n[i]].clone()  # a copy: not a view of the batch
        self.computed += len(keys)
        return out

    def _bottom(self, inputs: dict) -> torch.Tensor:
        """The hidden states entering the first trainable layer (the last layer's output when
        none trains), computed by the backbone's own forward, stopped there."""
        layers = self.backbone.get_submodule(self.layers_path)
        if self.first < len(layers):
            handle = layers[self.first].register_forward_pre_hook(_capture_input, with_kwargs=True)
        else:
            handle = layers[-1].register_forward_hook(_capture_output)
        try:
            with torch.no_grad():
                self._original(**inputs)
        except _Captured as captured:
            return captured.hidden
        finally:
            handle.remove()
        raise ForgetlabError(
            f"method freeze: cache_frozen: the backbone's forward never reached "
            f"{self.layers_path}.{min(self.first, len(layers) - 1)}"
        )

    def _top(self, inputs: dict, hidden: torch.Tensor):
        """The backbone's own forward over the trainable layers, from `hidden`."""
        owner, name = _parent(self.backbone, self.layers_path)
        embed_owner, embed_name = _parent(self.backbone, self.embeddings_path)
        layers, embeddings = getattr(owner, name), getattr(embed_owner, embed_name)
        setattr(owner, name, nn.ModuleList(list(layers)[self.first :]))
        setattr(embed_owner, embed_name, _Replay(hidden))
        try:
            return self._original(**inputs)
        finally:
            setattr(owner, name, layers)
            setattr(embed_owner, embed_name, embeddings)

    def _check(self, inputs: dict, hidden: torch.Tensor) -> None:
        """Once: the cached path must give the backbone's own outputs on the real tokens (in
        eval mode, which draws no random numbers); a backbone whose forward is not
        embeddings -> layer list is refused here rather than trained wrongly."""
        modes = {m: m.training for m in self.backbone.modules()}
        self.backbone.eval()
        try:
            with torch.no_grad():
                ours = self._top(inputs, hidden).last_hidden_state
                theirs = self._original(**inputs).last_hidden_state
        finally:
            for module, training in modes.items():
                module.training = training
        real = inputs["attention_mask"].bool()
        if not torch.allclose(ours[real].float(), theirs[real].float(), rtol=1e-3, atol=1e-4):
            raise ForgetlabError(
                f"method freeze: cache_frozen gives other outputs than the backbone "
                f"{type(self.backbone).__name__} itself (its forward is not embeddings then "
                f"{self.layers_path}); run it with method.cache_frozen=false"
            )
        self.checked = True


def _layer_list(backbone: nn.Module, layer_index: re.Pattern) -> str:
    """The path of the ModuleList of numbered transformer layers (BERT's encoder.layer)."""
    for name, module in backbone.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) and layer_index.search(f"{name}.0."):
            return name
    raise ForgetlabError("method freeze: cache_frozen found no list of transformer layers")


def _embeddings_path(backbone: nn.Module, layers_path: str) -> str:
    """The largest module around the input embeddings that is not an ancestor of the layers:
    BERT's `embeddings` (word, position and token-type embeddings, LayerNorm, dropout)."""
    word = backbone.get_input_embeddings()
    path = next(name for name, module in backbone.named_modules() if module is word)
    parts = path.split(".")
    for end in range(1, len(parts) + 1):
        candidate = ".".join(parts[:end])
        if not layers_path.startswith(candidate + "."):
            return candidate
    raise ForgetlabError("method freeze: cache_frozen found the input embeddings inside a layer")
