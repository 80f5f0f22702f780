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

    def take(self, stacked: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The active trials' slices of a [K, ...] tensor, in block order. `dtype`: what the
        caller's op computes in (autocast's, for a matmul's weights; None: the tensor's); a
        subset of a trained parameter is gathered in it (see `_Rows`)."""
        if len(self.active) == self.size:
            return stacked
        if stacked.requires_grad and stacked.is_leaf and torch.is_grad_enabled():
            return _Rows.apply(stacked, self.active, self.index(stacked.device), dtype)
        return stacked.index_select(0, self.index(stacked.device))


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
    """Some trials' slices of a stacked parameter, gathered in the dtype the caller computes
    in, whose backward adds their gradients into the parameter's `.grad` in place and hands
    autograd nothing. Autograd's own backward of a slice writes a [K, ...] gradient of zeros
    around it, for every forward over a subset of the trials (trials that left, groups of
    trials run apart): for full fine-tuning a copy of every weight of every trial each time.

    On a CPU a slice at a time, converted as it is copied, and added back a slice at a time:
    a full-FT stack of a seed per trial runs most micro-batches in groups, and `index_select`
    then autocast's cast, backward the cast's fp32 gradient then `index_add_` (a scatter over
    an index the size of the gradient), moved each weight through memory about twice as often
    as a lone run's forward and backward do (8 full-FT trials: 0.74x the trials one after
    another, 0.82x this way). On a GPU, where each op is a kernel launch, one op each way."""

    @staticmethod
    def forward(ctx, param, active: list[int], index: torch.Tensor, dtype: torch.dtype | None):
        ctx.param, ctx.active = param, active
        ctx.save_for_backward(index)
        dtype = dtype or param.dtype
        if param.device.type != "cpu":
            return param.index_select(0, index).to(dtype)
        out = param.new_empty((len(active), *param.shape[1:]), dtype=dtype)
        for j, k in enumerate(active):
            out[j].copy_(param[k])
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        target = grad_to_add_into(ctx.param)
        if target.device.type != "cpu":
            (index,) = ctx.saved_tensors
            target.index_add_(0, index, grad.to(target.dtype))
        else:
            for j, k in enumerate(ctx.active):  # in the parameter's dtype, as a lone run's
                target[k].add_(grad[j])
        return None, None, None, None


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The dtype autocast runs a matmul in on `device` now; None: autocast is off."""
    kind = device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else None


def stack_params(params: list[torch.Tensor | None]) -> nn.Parameter | None:
    """The K trials' tensors as one [K, ...] parameter (None where the layers have none)."""
    if params[0] is None:
        return None
    return nn.Parameter(
        torch.stack([p.detach() for p in params]).contiguous(),
        requires_grad=params[0].requires_grad,
    )
