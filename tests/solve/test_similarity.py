import pytest
import torch

from xrecon.errors import InputError, ShapeError
from xrecon.solve.similarity import SIMILARITIES, gradient_ncc, image_similarity, multiscale_ncc, ncc, patch_ncc


def _blobs(batch=2, size=48, shift=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64),
                            indexing="ij")
    img = (0.01 * xx + 0.02 * yy).expand(batch, size, size).clone()  # no flat window anywhere
    for _ in range(6):
        c = torch.rand(2, generator=g, dtype=torch.float64) * size * 0.6 + size * 0.2
        r = 3 + 5 * torch.rand(1, generator=g, dtype=torch.float64)
        img += torch.exp(-((xx - c[0] - shift) ** 2 + (yy - c[1]) ** 2) / (2 * r**2))
    return img


@pytest.mark.parametrize("name", sorted(SIMILARITIES))
def test_identical_up_to_affine_intensity_scores_one(name):
    a = _blobs()
    f = image_similarity(name)
    s = f(a, 3.0 * a + 7.0)
    assert s.shape == (2,) and torch.allclose(s, torch.ones(2, dtype=torch.float64), atol=1e-3)


@pytest.mark.parametrize("name", sorted(SIMILARITIES))
def test_score_falls_with_misalignment_and_is_per_case(name):
    f = image_similarity(name)
    a = _blobs(batch=1)
    shifted = torch.cat([_blobs(batch=1, shift=s) for s in (0.0, 1.0, 3.0, 6.0)])
    s = f(a.expand(4, -1, -1), shifted)
    assert s.shape == (4,)
    assert (s[:-1] > s[1:]).all()


def test_ncc_matches_pearson_and_uses_the_mask():
    g = torch.Generator().manual_seed(1)
    a, b = torch.rand(3, 16, 16, generator=g), torch.rand(3, 16, 16, generator=g)
    ref = torch.stack([torch.corrcoef(torch.stack([x.flatten(), y.flatten()]))[0, 1] for x, y in zip(a, b)])
    assert torch.allclose(ncc(a, b), ref, atol=1e-5)
    mask = torch.zeros(16, 16)
    mask[:8] = 1
    b2 = b.clone()
    b2[:, :8] = a[:, :8] * 2  # top half identical up to scale
    assert torch.allclose(ncc(a, b2, mask), torch.ones(3), atol=1e-5)


def test_constant_image_scores_zero_with_finite_gradient():
    a = _blobs(batch=1).requires_grad_(True)
    b = torch.ones(1, 48, 48, dtype=torch.float64)
    for f in (ncc, gradient_ncc, multiscale_ncc):
        s = f(a, b)
        assert abs(float(s.detach())) < 1e-3
        (g,) = torch.autograd.grad(s.sum(), a)
        assert torch.isfinite(g).all()


def test_bad_inputs_raise_typed_errors():
    with pytest.raises(ShapeError):
        ncc(torch.zeros(2, 8, 8), torch.zeros(2, 8, 9))
    with pytest.raises(ShapeError):
        ncc(torch.zeros(8, 8), torch.zeros(8, 8))
    with pytest.raises(InputError):
        patch_ncc(torch.zeros(1, 8, 8), torch.zeros(1, 8, 8), 4)
    with pytest.raises(InputError):
        image_similarity("mutual_information")
