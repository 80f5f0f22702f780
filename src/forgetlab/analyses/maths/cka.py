"""Representation similarity: linear CKA (Kornblith et al., 2019, "Similarity of Neural
Network Representations Revisited") and a covariance alignment for unpaired input sets.

CKA compares two representations of the *same* n inputs (rows paired), e.g. layer l of the
base model against layer l of a fine-tuned one. It is invariant to orthogonal transforms and
isotropic scaling of either representation, but not to general invertible linear maps.

- biased CKA: the plug-in HSIC estimator, computed in feature space (d × d products), so n
  can be large (every token of a probe set). It is biased upwards when d is not small
  compared to n: two independent random representations score well above 0.
- debiased CKA: the unbiased HSIC estimator (Song et al., 2012, as used by Nguyen, Raghu &
  Kornblith, 2021), which removes that bias; it works on n × n Gram matrices.

`covariance_alignment` compares two *different* input sets in one feature space (rows are
not paired, e.g. task A's and task B's examples through the same model) by how much their
feature covariances overlap.

All functions compute in float64 and accept torch tensors (any device/dtype) or numpy arrays.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["covariance_alignment", "cka_by_layer", "linear_cka"]

Array = np.ndarray | torch.Tensor

# A centered matrix whose norm is below this fraction of the raw matrix's norm is constant up
# to the rounding of its mean: treat it as zero variance (nan) instead of scoring the noise.
_ZERO_VARIANCE_RTOL = 1e-12


def _as_matrix(x: Array, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        # via torch: bfloat16/float16 tensors and GPU tensors have no direct numpy view
        x = x.detach().to("cpu", torch.float64).numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (examples × features), got shape {x.shape}")
    return x


def _centered(x: np.ndarray) -> np.ndarray | None:
    """Columns centered, or None if the matrix has (numerically) zero variance."""
    xc = x - x.mean(axis=0, keepdims=True)
    scale = np.linalg.norm(x)
    if not np.isfinite(scale):
        raise ValueError("input contains nan or inf")
    if np.linalg.norm(xc) <= _ZERO_VARIANCE_RTOL * scale:  # also catches an all-zero x
        return None
    return xc


def _paired(x: Array, y: Array) -> tuple[np.ndarray, np.ndarray]:
    x, y = _as_matrix(x, "X"), _as_matrix(y, "Y")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"X and Y need the same examples (rows): {x.shape[0]} vs {y.shape[0]}")
    return x, y


def _u_centered_gram(x: np.ndarray) -> np.ndarray:
    """U-centering of the linear Gram matrix (Székely & Rizzo, 2014).

    <U(K), U(L)> / (n (n - 3)) is the unbiased HSIC estimator of Song et al. (2012); this
    form is the one Kornblith et al.'s reference code uses because it is numerically stabler
    than summing Song et al.'s three terms.
    """
    n = x.shape[0]
    gram = x @ x.T
    np.fill_diagonal(gram, 0.0)
    means = gram.sum(axis=0) / (n - 2)
    means -= means.sum() / (2 * (n - 1))
    gram -= means[:, None]
    gram -= means[None, :]
    np.fill_diagonal(gram, 0.0)
    return gram


def _biased_cka(xc: np.ndarray, yc: np.ndarray) -> float:
    # ||Yc^T Xc||_F^2 = tr(K H L H) for K = X X^T, L = Y Y^T: the same value without n × n.
    cross = np.linalg.norm(yc.T @ xc) ** 2
    return float(cross / (np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc)))


def _debiased_cka(xc: np.ndarray, yc: np.ndarray) -> float:
    k, lg = _u_centered_gram(xc), _u_centered_gram(yc)
    norm_k, norm_l = np.linalg.norm(k), np.linalg.norm(lg)
    if norm_k == 0 or norm_l == 0:
        return float("nan")
    return float(np.vdot(k, lg) / (norm_k * norm_l))


def linear_cka(X: Array, Y: Array, debiased: bool = False) -> float:
    """Linear CKA between two representations of the same n inputs: X (n, d1), Y (n, d2).

    1 for representations equal up to rotation and scale; the biased form is in [0, 1], the
    debiased one can be slightly negative. Returns nan if X or Y has zero variance.

    The biased form never builds an n × n matrix. The debiased form does (two float64 n × n
    Gram matrices: O(n²) memory, about 8 GB at n = 22,000), so callers must cap n, e.g. subsample
    tokens; it needs n >= 4.
    """
    x, y = _paired(X, Y)
    if debiased and x.shape[0] < 4:
        raise ValueError(f"debiased CKA needs at least 4 examples, got {x.shape[0]}")
    xc, yc = _centered(x), _centered(y)
    if xc is None or yc is None:
        return float("nan")
    return _debiased_cka(xc, yc) if debiased else _biased_cka(xc, yc)


def covariance_alignment(X: Array, Y: Array) -> float:
    """Overlap of the feature covariances of two input sets X (n1, d), Y (n2, d).

    tr(C_x C_y) / (||C_x||_F ||C_y||_F) with C the centered d × d covariance. Rows need not
    be paired or equally many, so it compares e.g. two tasks' inputs in one model's feature
    space. 1 when both sets have the same covariance up to scale (in particular X == Y), 0
    when their variance lies in orthogonal subspaces; always in [0, 1] since both C are
    positive semi-definite. Invariant to one rotation applied to both sets, not to rotating
    one of them. Returns nan if either set has zero variance.
    """
    x, y = _as_matrix(X, "X"), _as_matrix(Y, "Y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"X and Y need the same features: {x.shape[1]} vs {y.shape[1]}")
    xc, yc = _centered(x), _centered(y)
    if xc is None or yc is None:
        return float("nan")
    # The 1/(n-1) normalisations cancel in the ratio, so plain scatter matrices suffice.
    cx, cy = xc.T @ xc, yc.T @ yc
    return float(np.vdot(cx, cy) / (np.linalg.norm(cx) * np.linalg.norm(cy)))


def cka_by_layer(
    base: Sequence[Array], other: Sequence[Array], debiased: bool = False
) -> list[float]:
    """`linear_cka` of each layer's representation in `base` against the same layer in `other`.

    Each entry is (n, d) with the same n inputs, in the same order, for both models.
    """
    if len(base) != len(other):
        raise ValueError(f"different numbers of layers: {len(base)} vs {len(other)}")
    return [linear_cka(x, y, debiased=debiased) for x, y in zip(base, other)]
