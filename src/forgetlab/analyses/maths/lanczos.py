"""Largest Hessian eigenvalue from Hessian-vector products: the products and the solvers.

The Hessian of a language model never fits in memory, so everything here works from
Hessian-vector products (HVPs): two backward passes, the second one through the graph of the
first ("double backward"). An iterative eigensolver only ever asks for ``H @ v``.

* `hvp` and `HessianOperator`: ``H @ v`` for the mean loss over several batches, on a flat
  float64 vector (the eigensolvers' view) while the parameters keep their own dtype.
* `power_iteration` and `lanczos`: eigensolvers that take any ``matvec``. Lanczos is the
  default because it finds the largest *algebraic* eigenvalue (the sharpness that matters;
  Hessians away from a minimum are indefinite) in far fewer products; power iteration finds
  the largest *magnitude* one, which can be a negative eigenvalue.

Double backward needs every op in the forward pass to have a differentiable backward. Fused
attention kernels (SDPA flash / memory-efficient) do not, so transformers models must be
loaded with ``attn_implementation="eager"``; `hvp` turns the autograd error into a
`ForgetlabError` that says so.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from forgetlab.errors import ForgetlabError

__all__ = ["EigenResult", "HessianOperator", "hvp", "lanczos", "power_iteration"]

Closure = Callable[[], Tensor]
MatVec = Callable[[Tensor], Tensor]

# Lanczos stops when the new direction is this small relative to ||H q||: the Krylov space
# is then (numerically) invariant and the Ritz values are exact eigenvalues.
_BREAKDOWN_RTOL = 1e-10


@dataclass
class EigenResult:
    """One eigenvalue estimate and how it was reached.

    ``value`` is the largest algebraic eigenvalue for Lanczos and the largest-magnitude one
    (signed) for power iteration. ``min_value`` is the smallest algebraic eigenvalue
    (Lanczos only; ``None`` for power iteration). ``history`` holds the estimate after every
    iteration, so convergence can be inspected or plotted.
    """

    value: float
    min_value: float | None
    history: list[float] = field(default_factory=list)
    iterations: int = 0
    converged: bool = False
    method: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict."""
        return asdict(self)


# ---------------------------------------------------------------------------------------
# Hessian-vector products
# ---------------------------------------------------------------------------------------


def hvp(loss_fn: Closure, params: Sequence[Tensor], vec: Sequence[Tensor]) -> list[Tensor]:
    """``H @ vec`` for the scalar ``loss_fn()`` w.r.t. ``params``, by double backward.

    ``vec`` has one tensor per parameter, same shapes. Pearlmutter's trick: the gradient of
    ``g(θ) · v`` is ``H v``, and ``g`` keeps its graph (``create_graph=True``) so it can be
    differentiated again. Costs about two backward passes and never forms ``H``.
    """
    loss = loss_fn()
    if loss.dim() != 0:
        raise ForgetlabError(f"the loss must be a scalar, got shape {tuple(loss.shape)}")
    if not loss.requires_grad:
        # Caught here so `_grad` can read any autograd failure as a missing double backward.
        raise ForgetlabError(
            "the loss does not depend on the selected parameters (or was computed without "
            "gradients, e.g. under torch.no_grad)"
        )
    grads = _grad(loss, params, create_graph=True)
    dot = sum((g * v).sum() for g, v in zip(grads, vec, strict=True))
    if not isinstance(dot, Tensor) or not dot.requires_grad:
        # The gradient does not depend on the parameters (loss at most linear in them).
        return [torch.zeros_like(p) for p in params]
    return _grad(dot, params, create_graph=False)


def _grad(output: Tensor, params: Sequence[Tensor], *, create_graph: bool) -> list[Tensor]:
    """`torch.autograd.grad` with zeros for unused parameters and a readable failure."""
    try:
        grads = torch.autograd.grad(
            output, list(params), create_graph=create_graph, allow_unused=True
        )
    except torch.cuda.OutOfMemoryError:  # a RuntimeError too, with its own fix
        raise
    except RuntimeError as err:
        # In practice a kernel without a differentiable backward (SDPA flash/efficient
        # attention), which only shows up here, in the second backward.
        raise ForgetlabError(
            "Hessian-vector products need double backward, which failed; load the model "
            'with attn_implementation="eager" (fused SDPA/flash attention kernels have no '
            f"double backward) and without gradient checkpointing. Original error: {err}"
        ) from err
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)]


class HessianOperator:
    """``v -> H v`` on flat vectors, for a weighted sum of losses (e.g. several batches).

    ``closures`` is a list of ``(loss_fn, weight)``; the operator is the Hessian of
    ``sum(weight * loss_fn())``. With ``weight = batch_size / N`` and each closure returning
    its batch's mean loss, that is the Hessian of the mean loss over all ``N`` examples,
    computed one batch at a time so memory stays that of one batch.

    Flat vectors are float64 (the eigensolvers orthogonalise them, where float32 rounding
    would show); each product is computed in the parameters' own dtype and device.
    """

    def __init__(self, closures: list[tuple[Closure, float]], params: Sequence[nn.Parameter]):
        if not closures:
            raise ForgetlabError("the Hessian operator needs at least one loss (batch)")
        if not params:
            raise ForgetlabError("the Hessian operator needs at least one parameter")
        self.closures = list(closures)
        self.params = list(params)
        self.dim = sum(p.numel() for p in self.params)

    def matvec(self, v: Tensor) -> Tensor:
        """``H @ v`` for a flat vector of length `dim`; float64, on ``v``'s device."""
        if v.shape != (self.dim,):
            raise ValueError(f"expected a flat vector of length {self.dim}, got {tuple(v.shape)}")
        pieces = self._unflatten(v)
        out = torch.zeros(self.dim, dtype=torch.float64, device=v.device)
        for loss_fn, weight in self.closures:
            out += weight * self._flatten(hvp(loss_fn, self.params, pieces), v.device)
        if not torch.isfinite(out).all():
            raise ForgetlabError("a Hessian-vector product is not finite (NaN/inf loss?)")
        return out

    def _unflatten(self, v: Tensor) -> list[Tensor]:
        pieces, start = [], 0
        for p in self.params:
            chunk = v[start : start + p.numel()].view(p.shape)
            pieces.append(chunk.to(device=p.device, dtype=p.dtype))
            start += p.numel()
        return pieces

    @staticmethod
    def _flatten(tensors: Iterable[Tensor], device: torch.device) -> Tensor:
        return torch.cat([t.reshape(-1).to(device=device, dtype=torch.float64) for t in tensors])


# ---------------------------------------------------------------------------------------
# Eigensolvers
# ---------------------------------------------------------------------------------------


def power_iteration(
    matvec: MatVec,
    dim: int,
    iters: int = 100,
    tol: float = 1e-4,
    seed: int = 0,
    *,
    device: torch.device | str | None = None,
) -> EigenResult:
    """Dominant (largest-magnitude, signed) eigenvalue of a symmetric operator.

    Repeats ``v <- H v / ||H v||`` and reports the Rayleigh quotient ``v·Hv``. Converges at
    rate ``|λ2/λ1|``, so slowly when the top two magnitudes are close, and not at all when
    ``λmax ≈ -λmin`` (the iterate oscillates). Memory is O(dim), which is its one advantage
    over `lanczos` for very large groups.
    """
    _check_solver_args(dim, iters)
    v = _random_unit(dim, seed, device)
    history: list[float] = []
    converged = False
    for _ in range(iters):
        w = matvec(v)
        history.append(float(v @ w))
        norm = w.norm()
        if norm == 0:  # v lies in the null space; exact for the zero operator.
            converged = True
            break
        if len(history) > 1 and _relative_change(history[-2], history[-1]) < tol:
            converged = True
            break
        v = w / norm
    return EigenResult(history[-1], None, history, len(history), converged, "power")


def lanczos(
    matvec: MatVec,
    dim: int,
    iters: int = 30,
    tol: float = 1e-4,
    seed: int = 0,
    *,
    device: torch.device | str | None = None,
) -> EigenResult:
    """Extreme eigenvalues of a symmetric operator by Lanczos with full re-orthogonalisation.

    Builds an orthonormal basis ``Q`` of the Krylov space ``{q, Hq, H²q, ...}`` and the
    tridiagonal ``T = Qᵀ H Q``; the extreme eigenvalues of ``T`` (Ritz values) converge to
    those of ``H`` much faster than power iteration. In floating point the textbook
    three-term recurrence loses orthogonality and produces spurious copies of converged
    eigenvalues, so every new vector is orthogonalised against *all* previous ones, twice
    (classical Gram–Schmidt twice is as accurate as modified Gram–Schmidt, in two matrix
    products). That costs ``iters * dim`` float64 values of memory.

    Stops when the top Ritz value changes by less than ``tol`` (relative) in one iteration,
    or when the Krylov space is exhausted (``beta ≈ 0``, at the latest after ``dim`` steps),
    where the Ritz values are exact.
    """
    _check_solver_args(dim, iters)
    steps = min(iters, dim)
    basis = torch.empty(steps, dim, dtype=torch.float64, device=device)
    basis[0] = _random_unit(dim, seed, device)
    alphas: list[float] = []
    betas: list[float] = []
    history: list[float] = []
    ritz = np.zeros(1)
    h_norm = 0.0
    converged = False
    for k in range(steps):
        w = matvec(basis[k]).to(dtype=torch.float64, device=basis.device)
        h_norm = max(h_norm, float(w.norm()))
        alphas.append(float(basis[k] @ w))
        w = _orthogonalise(w, basis[: k + 1])
        ritz = _tridiagonal_eigvalsh(alphas, betas)
        history.append(float(ritz[-1]))
        if len(history) > 1 and _relative_change(history[-2], history[-1]) < tol:
            converged = True
            break
        beta = float(w.norm())
        if beta <= _BREAKDOWN_RTOL * h_norm or k + 1 == dim:
            converged = True  # invariant subspace: the Ritz values are eigenvalues
            break
        if k + 1 < steps:
            betas.append(beta)
            basis[k + 1] = w / beta
    return EigenResult(float(ritz[-1]), float(ritz[0]), history, len(history), converged, "lanczos")


def _orthogonalise(w: Tensor, basis: Tensor) -> Tensor:
    """Remove from ``w`` its components along the rows of ``basis`` (Gram–Schmidt, twice)."""
    for _ in range(2):
        w = w - basis.T @ (basis @ w)
    return w


def _tridiagonal_eigvalsh(alphas: list[float], betas: list[float]) -> np.ndarray:
    """Ascending eigenvalues of the symmetric tridiagonal matrix (tiny: at most `iters`)."""
    k = len(alphas)
    t = np.diag(np.asarray(alphas, dtype=np.float64))
    if k > 1:
        off = np.asarray(betas[: k - 1], dtype=np.float64)
        t += np.diag(off, 1) + np.diag(off, -1)
    return np.linalg.eigvalsh(t)


def _random_unit(dim: int, seed: int, device: torch.device | str | None) -> Tensor:
    """Seeded random unit vector; drawn on the CPU so the start is the same on any device."""
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(dim, generator=gen, dtype=torch.float64)
    return (v / v.norm()).to(device) if device is not None else v / v.norm()


def _relative_change(old: float, new: float) -> float:
    scale = max(abs(old), abs(new))
    return 0.0 if scale == 0 else abs(new - old) / scale


def _check_solver_args(dim: int, iters: int) -> None:
    if dim < 1:
        raise ForgetlabError(f"cannot compute an eigenvalue over {dim} parameters")
    if iters < 1:
        raise ForgetlabError(f"iters must be at least 1, got {iters}")
