"""Where each trial's rows sit in a stacked batch (`Layout`), and the stacked parameters'
gradients: a slice's backward adds into the parameter's kept `.grad` buffer in place."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.weak import WeakTensorKeyDictionary


@dataclass
class Layout:
    """Shared by every stacked layer of one model: which trials the batch holds (their
    indices into the K slices, in block order) and how many rows each block has."""

    size: int  # K
    active: list[int] = field(default_factory=list)
    rows: int = 0
    _index: torch.Tensor | None = None

    def set(self, active: list[int], rows: int) -> None:
        self.active, self.rows, self._index = list(active), rows, None

    def index(self, device: torch.device) -> torch.Tensor:
        """The active trials' indices as a tensor on `device` (made once per layout)."""
        if self._index is None or self._index.device != device:
            self._index = torch.tensor(self.active, device=device)
        return self._index

    def offsets(self, device: torch.device, size: int) -> torch.Tensor:
        """[active, 1]: each block's first row in a [K * size, ...] view of a stacked tensor."""
        return (self.index(device) * size).unsqueeze(1)

    def take(self, stacked: torch.Tensor) -> torch.Tensor:
        """The active trials' slices of a [K, ...] tensor, in block order."""
        if len(self.active) == self.size:
            return stacked
        index = self.index(stacked.device)
        if stacked.requires_grad and stacked.is_leaf and torch.is_grad_enabled():
            return _Rows.apply(stacked, index)
        return stacked.index_select(0, index)


# Each stacked parameter's gradient buffer, kept while the optimizer lets go of `.grad`
# between steps: a gradient added into it in place costs no fresh [K, ...] tensor of zeros.
_GRAD_BUFFERS = WeakTensorKeyDictionary()


def grad_to_add_into(param: torch.Tensor) -> torch.Tensor:
    """`param.grad`, to add a gradient into in place; where it is None, the parameter's
    buffer, zeroed, becomes it."""
    if param.grad is None:
        buffer = _GRAD_BUFFERS.get(param)
        if buffer is None:
            buffer = _GRAD_BUFFERS[param] = torch.zeros_like(param)
        param.grad = buffer.zero_()
    return param.grad


class _Rows(torch.autograd.Function):
    """Some trials' slices of a stacked parameter (`index_select`), whose backward adds their
    gradients into the parameter's `.grad` in place and hands autograd nothing. Autograd's own
    backward of a slice writes a [K, ...] gradient of zeros around it, for every forward over
    a subset of the trials (trials that left, groups of trials run apart): for full fine-tuning
    a copy of every weight of every trial each time."""

    @staticmethod
    def forward(ctx, param: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        ctx.param = param
        ctx.save_for_backward(index)
        return param.index_select(0, index)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (index,) = ctx.saved_tensors
        target = grad_to_add_into(ctx.param)
        target.index_add_(0, index, grad.to(target.dtype))
        return None, None


def stack_params(params: list[torch.Tensor | None]) -> nn.Parameter | None:
    """The K trials' tensors as one [K, ...] parameter (None where the layers have none)."""
    if params[0] is None:
        return None
    return nn.Parameter(
        torch.stack([p.detach() for p in params]).contiguous(),
        requires_grad=params[0].requires_grad,
    )
