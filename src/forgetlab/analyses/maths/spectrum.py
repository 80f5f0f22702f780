"""Spectrum of a weight update ΔW = W_tuned - W_base: how many directions fine-tuning
actually used.

LoRA's ΔW has rank <= r by construction; full fine-tuning's is full rank numerically but may
concentrate its energy in few directions. `rank90` (directions holding 90% of ‖ΔW‖²_F) makes
the two comparable, and `random_reference` gives what an unstructured (Gaussian) update of
the same shape and norm would need, so "low rank" means "well below that reference".
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
import torch

__all__ = [
    "matrix_spectrum",
    "numerical_rank",
    "random_reference",
    "rank_for_energy",
    "singular_values",
    "stable_rank",
]

Array = np.ndarray | torch.Tensor


def singular_values(delta: Array) -> np.ndarray:
    """Singular values of a matrix, descending, float64."""
    t = torch.as_tensor(delta).detach().to("cpu", torch.float64)
    return torch.linalg.svdvals(t).numpy()


def _descending(s: Array) -> np.ndarray:
    return np.sort(np.abs(np.asarray(s, dtype=np.float64)))[::-1]


def rank_for_energy(s: Array, energy: float = 0.9) -> int:
    """Smallest k with s_1² + ... + s_k² >= energy · Σ s_i²; 0 for a zero matrix."""
    if not 0 < energy <= 1:
        raise ValueError(f"energy={energy} must be in (0, 1]")
    cumulative = np.cumsum(_descending(s) ** 2)
    if cumulative.size == 0 or cumulative[-1] == 0:
        return 0
    # The total is the last cumulative sum itself, so energy=1 gives exactly the number of
    # non-zero values rather than depending on summation order.
    return int(np.searchsorted(cumulative, energy * cumulative[-1], side="left") + 1)


def numerical_rank(s: Array, shape: tuple[int, ...], rtol: float | None = None) -> int:
    """Number of singular values above rtol · s_max.

    The default rtol = max(shape) · eps(float32), numpy's `matrix_rank` rule at float32
    precision, because ΔW is a difference of float32 weights: anything smaller is rounding.
    Caveat: that rounding scales with |W|, not |ΔW|, so for an update that is tiny compared
    with the weights (few steps, small learning rate) rounding noise can pass the threshold;
    prefer `rank_for_energy` there or pass a larger rtol.
    """
    s = _descending(s)
    if s.size == 0 or s[0] == 0:
        return 0
    if rtol is None:
        rtol = max(shape) * float(np.finfo(np.float32).eps)
    return int(np.count_nonzero(s > rtol * s[0]))


def stable_rank(s: Array) -> float:
    """Σ s_i² / s_max² (‖ΔW‖²_F / ‖ΔW‖²_2), a smooth rank in [1, rank]; 0 for a zero matrix."""
    s = _descending(s)
    if s.size == 0 or s[0] == 0:
        return 0.0
    return float(np.sum(s**2) / s[0] ** 2)


@lru_cache(maxsize=64)
def _unit_gaussian_spectrum(shape: tuple[int, int], seed: int) -> np.ndarray:
    # Cached: a model has few distinct layer shapes, and the SVD of a large one is the cost.
    rng = np.random.default_rng(seed)
    s = singular_values(rng.standard_normal(shape))
    s /= np.sqrt(np.sum(s**2))
    s.flags.writeable = False  # shared by every caller through the cache
    return s


def random_reference(shape: tuple[int, ...], frobenius: float, seed: int = 0) -> np.ndarray:
    """Singular values (descending) of a Gaussian matrix of this shape, rescaled to the given
    Frobenius norm: the spectrum of an unstructured update of the same size."""
    if len(shape) != 2:
        raise ValueError(f"shape must be 2-D, got {tuple(shape)}")
    return _unit_gaussian_spectrum((int(shape[0]), int(shape[1])), seed) * float(frobenius)


def matrix_spectrum(name: str, delta: Array, energy: float = 0.9, seed: int = 0) -> dict[str, Any]:
    """Summary of one ΔW (out × in), with plain Python values so it can be written as JSON.

    `rank90` is the rank for `energy` (named for the default 0.9; `energy` is stored too),
    `random_rank90` the same for `random_reference`, `max_rank` = min(out, in).
    """
    t = torch.as_tensor(delta)
    if t.dim() != 2:
        raise ValueError(f"{name}: ΔW must be 2-D, got shape {tuple(t.shape)}")
    shape = (int(t.shape[0]), int(t.shape[1]))
    s = singular_values(t)
    frobenius = float(np.sqrt(np.sum(s**2)))
    return {
        "name": name,
        "shape": list(shape),
        "frobenius": frobenius,
        "spectral_norm": float(s[0]) if s.size else 0.0,
        "stable_rank": stable_rank(s),
        "rank90": rank_for_energy(s, energy),
        "energy": energy,
        "numerical_rank": numerical_rank(s, shape),
        "max_rank": min(shape),
        "random_rank90": rank_for_energy(random_reference(shape, frobenius, seed), energy),
        "singular_values": [float(v) for v in s],
    }
