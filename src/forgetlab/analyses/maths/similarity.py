"""Task × task comparisons: cosines between the tasks' gradients, and how each training stage
moved each task's score."""

from __future__ import annotations

import numpy as np
import torch


def cosine_matrix(vectors: list[torch.Tensor]) -> list[list[float]]:
    """Cosine between every pair of vectors, in float64 (a zero vector has cosine 0)."""
    unit = [v.double() / v.double().norm().clamp(min=1e-30) for v in vectors]  # 22M terms
    return [[float(a @ b) for b in unit] for a in unit]


def interference(R: list[list[float]]) -> list[list[float]]:
    """`interference[j][i]` = R[j+1][i] − R[j][i]: how training stage j+1 moved task i."""
    R = np.asarray(R)
    return (R[1:] - R[:-1]).tolist()
