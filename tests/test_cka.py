"""Linear CKA and covariance alignment: properties that hold for the true quantities and
brute-force n × n computations of the estimators."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from forgetlab.analyses.maths.cka import cka_by_layer, covariance_alignment, linear_cka

BOTH = pytest.mark.parametrize("debiased", [False, True], ids=["biased", "debiased"])


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _orthogonal(d: int, seed: int) -> np.ndarray:
    q, r = np.linalg.qr(_rng(seed).standard_normal((d, d)))
    return q * np.sign(np.diag(r))  # sign fix: Haar-distributed, never a plain identity


def _pair(n: int = 120, d1: int = 12, d2: int = 9, seed: int = 0) -> tuple[np.ndarray, ...]:
    """Two related but not linearly equivalent representations, with a non-zero mean."""
    rng = _rng(seed)
    x = rng.standard_normal((n, d1)) + 3.0
    y = np.tanh(x @ rng.standard_normal((d1, d2))) + 0.5 * rng.standard_normal((n, d2))
    return x, y


def _hsic_biased(k: np.ndarray, lg: np.ndarray) -> float:
    n = k.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    return float(np.trace(k @ h @ lg @ h)) / (n - 1) ** 2


def _hsic_unbiased(k: np.ndarray, lg: np.ndarray) -> float:
    """Song et al. (2012), eq. (5), term by term on the raw Gram matrices."""
    n = k.shape[0]
    k, lg = k - np.diag(np.diag(k)), lg - np.diag(np.diag(lg))
    ones = np.ones(n)
    term = np.trace(k @ lg) + (ones @ k @ ones) * (ones @ lg @ ones) / ((n - 1) * (n - 2))
    term -= 2.0 / (n - 2) * (ones @ k @ lg @ ones)
    return float(term) / (n * (n - 3))


def _cka_brute(x: np.ndarray, y: np.ndarray, hsic) -> float:
    k, lg = x @ x.T, y @ y.T
    return hsic(k, lg) / np.sqrt(hsic(k, k) * hsic(lg, lg))


@BOTH
def test_self_similarity_is_one(debiased):
    x, _ = _pair()
    assert linear_cka(x, x, debiased=debiased) == pytest.approx(1.0, abs=1e-12)


@BOTH
def test_invariant_to_orthogonal_maps_scaling_and_translation(debiased):
    x, y = _pair()
    ref = linear_cka(x, y, debiased=debiased)
    assert ref < 0.95  # otherwise the checks below would be trivial
    x2 = 7.0 * x @ _orthogonal(x.shape[1], seed=1) - 4.0
    y2 = 0.01 * y @ _orthogonal(y.shape[1], seed=2) + 1.0
    assert linear_cka(x2, y2, debiased=debiased) == pytest.approx(ref, rel=1e-10)


@BOTH
def test_not_invariant_to_a_general_invertible_map(debiased):
    x, y = _pair()
    rng = _rng(3)
    d = x.shape[1]
    a = np.diag(np.geomspace(0.1, 10.0, d)) @ rng.standard_normal((d, d))
    assert abs(np.linalg.det(a)) > 1e-6  # invertible, so X A carries the same information
    assert linear_cka(x, x @ a, debiased=debiased) < 0.95
    assert abs(linear_cka(x @ a, y, debiased=debiased) - linear_cka(x, y, debiased=debiased)) > 0.01


@BOTH
def test_symmetric(debiased):
    x, y = _pair()
    assert linear_cka(x, y, debiased=debiased) == pytest.approx(
        linear_cka(y, x, debiased=debiased), rel=1e-12
    )


def test_biased_equals_hsic_with_centering_matrix():
    x, y = _pair(n=40, d1=6, d2=8, seed=4)
    assert linear_cka(x, y) == pytest.approx(_cka_brute(x, y, _hsic_biased), rel=1e-10)


def test_debiased_equals_song_et_al_unbiased_hsic():
    x, y = _pair(n=40, d1=6, d2=8, seed=5)
    value = linear_cka(x, y, debiased=True)
    assert value == pytest.approx(_cka_brute(x, y, _hsic_unbiased), rel=1e-10)
    assert value != pytest.approx(linear_cka(x, y), rel=1e-3)  # the two estimators differ


def test_debiased_removes_the_bias_between_independent_features():
    rng = _rng(6)
    x, y = rng.standard_normal((500, 128)), rng.standard_normal((500, 128))
    assert abs(linear_cka(x, y, debiased=True)) < 0.05
    assert linear_cka(x, y) > 0.15  # biased: about sqrt(d1 d2) / n for independent Gaussians


def test_torch_input_any_dtype_matches_numpy():
    x, y = _pair()
    xt = torch.from_numpy(x).to(torch.float32)
    expected = linear_cka(xt.double().numpy(), y)
    assert linear_cka(xt, torch.from_numpy(y)) == pytest.approx(expected, rel=1e-12)
    assert linear_cka(xt.to(torch.bfloat16), y) == pytest.approx(expected, abs=0.02)


@BOTH
def test_zero_variance_gives_nan(debiased):
    _, y = _pair(n=10)
    for constant in (np.zeros((10, 3)), np.full((10, 3), 0.1, dtype=np.float32)):
        assert np.isnan(linear_cka(constant, y, debiased=debiased))
        assert np.isnan(linear_cka(y, constant, debiased=debiased))


def test_bad_input_raises():
    x, y = _pair(n=10)
    with pytest.raises(ValueError, match="at least 4"):
        linear_cka(x[:3], y[:3], debiased=True)
    with pytest.raises(ValueError, match="same examples"):
        linear_cka(x, y[:9])
    with pytest.raises(ValueError, match="2-D"):
        linear_cka(x[:, 0], y)


def test_cka_by_layer():
    x, y = _pair()
    values = cka_by_layer([x, y], [y, torch.from_numpy(y)], debiased=True)
    assert values == pytest.approx([linear_cka(x, y, debiased=True), 1.0], rel=1e-12)
    with pytest.raises(ValueError, match="numbers of layers"):
        cka_by_layer([x], [x, y])


def test_covariance_alignment_identity_symmetry_and_brute_force():
    x, _ = _pair(n=80, seed=7)
    z, _ = _pair(n=50, seed=8)  # a different set with a different number of rows
    z = z * np.linspace(0.2, 3.0, z.shape[1])
    assert covariance_alignment(x, x) == pytest.approx(1.0, abs=1e-12)
    cx, cz = np.cov(x, rowvar=False), np.cov(z, rowvar=False)
    brute = np.trace(cx @ cz) / (np.linalg.norm(cx) * np.linalg.norm(cz))
    value = covariance_alignment(x, z)
    assert value == pytest.approx(brute, rel=1e-10)
    assert value == pytest.approx(covariance_alignment(z, x), rel=1e-12)
    assert 0.0 < value < 0.99


def test_covariance_alignment_rotation_and_scale():
    x, _ = _pair(n=80, seed=9)
    z = x[:60] * np.linspace(0.5, 2.0, x.shape[1]) + 1.0
    q = _orthogonal(x.shape[1], seed=10)
    ref = covariance_alignment(x, z)
    # One rotation of the shared feature space for both sets, and any isotropic scales.
    assert covariance_alignment(3.0 * x @ q, 0.2 * z @ q) == pytest.approx(ref, rel=1e-10)
    # Rotating only one set changes which directions it varies in.
    assert abs(covariance_alignment(x @ q, z) - ref) > 0.01


def test_covariance_alignment_orthogonal_subspaces_and_same_distribution():
    rng = _rng(11)
    scale = np.array([3.0, 1.0, 0.5, 0.1])
    a, b = rng.standard_normal((4000, 4)) * scale, rng.standard_normal((3000, 4)) * scale
    assert covariance_alignment(a, b) > 0.99  # two samples of one distribution, unpaired
    only_first, only_second = np.zeros((50, 4)), np.zeros((50, 4))
    only_first[:, 0] = rng.standard_normal(50)
    only_second[:, 1] = rng.standard_normal(50)
    assert covariance_alignment(only_first, only_second) == pytest.approx(0.0, abs=1e-12)
    assert np.isnan(covariance_alignment(np.ones((5, 4)), a))
    with pytest.raises(ValueError, match="same features"):
        covariance_alignment(a, b[:, :3])
