"""Sampling on torch: shapes, dtypes, generators, and the moments each distribution promises."""

from __future__ import annotations

import pytest
import torch

from sharpc.distributions import Gaussian, Hypercube, Lebesgue, Sphere

ALL = [Gaussian(), Sphere(), Hypercube(0.5), Lebesgue(2.0)]


@pytest.mark.parametrize("mu", ALL, ids=lambda m: m.name)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shape_dtype_and_generator_reproducibility(mu, dtype):
    a = mu.sample(7, 5, generator=torch.Generator().manual_seed(1), dtype=dtype)
    b = mu.sample(7, 5, generator=torch.Generator().manual_seed(1), dtype=dtype)
    assert a.shape == (7, 5) and a.dtype == dtype and torch.equal(a, b)


def test_sphere_normalizes_over_all_coordinates_and_is_isotropic():
    v = Sphere().sample(200_000, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.allclose(v.norm(dim=1), torch.ones(len(v), dtype=torch.float64))
    second_moment = v.T @ v / len(v)
    assert torch.allclose(second_moment, torch.eye(6, dtype=torch.float64) / 6, atol=3e-3)


def test_hypercube_stays_in_the_box():
    cube = Hypercube(0.25).sample(10_000, 3, generator=torch.Generator().manual_seed(0))
    assert cube.abs().max() <= 0.25 and cube.abs().max() > 0.24


@pytest.mark.parametrize("lower", [0.5, 2.0])
def test_lebesgue_importance_weights_integrate_the_volume(lower):
    """E[w 1(v in [-1, 1]^3)] is the cube's Lebesgue volume 8, and v ~ N(0, I/L)."""
    mu = Lebesgue(lower)
    v = mu.sample(400_000, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    w = torch.as_tensor(mu.weights(v.numpy()))
    inside = (v.abs() <= 1).all(dim=1).double()
    values = w * inside
    assert abs(values.mean().item() - 8.0) < 5 * values.std().item() / len(v) ** 0.5
    assert torch.allclose(v.T @ v / len(v), torch.eye(3, dtype=torch.float64) / lower, atol=0.02 / lower)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("mu", ALL, ids=lambda m: m.name)
def test_sampling_on_cuda(mu):
    g = torch.Generator(device="cuda").manual_seed(0)
    assert mu.sample(4, 3, generator=g, device="cuda").device.type == "cuda"
