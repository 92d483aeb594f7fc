"""Domain randomisation: ranges, identity when disabled, each augmentation acting."""
from __future__ import annotations

import dataclasses

import torch

from xrecon.sim.augment import NO_AUGMENT, Augmenter, normalise_image


def _images(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    # a bright disc on a ramp: structure that every augmentation visibly changes
    v, u = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    disc = (((u - 16) ** 2 + (v - 16) ** 2) < 64).float()
    base = 0.3 * u / 31 + disc
    return normalise_image(base[None, None].repeat(n, 1, 1, 1) * (1 + 0.1 * torch.rand(n, 1, 1, 1, generator=g)) + 5.0)


def test_normalise_image_spans_zero_to_one():
    x = normalise_image(torch.randn(3, 1, 8, 8) * 50 + 7)
    assert torch.allclose(x.amin(dim=(1, 2, 3)), torch.zeros(3)) and torch.allclose(x.amax(dim=(1, 2, 3)), torch.ones(3))


def test_disabled_augmenter_is_the_identity():
    x = _images()
    assert torch.equal(Augmenter(NO_AUGMENT)(x), x)


def test_each_augmentation_changes_images_and_keeps_the_range():
    x = _images()
    only = {
        "invert": dataclasses.replace(NO_AUGMENT, p_invert=1.0),
        "contrast": dataclasses.replace(NO_AUGMENT, p_contrast=1.0, contrast=(0.5, 0.6)),
        "gamma": dataclasses.replace(NO_AUGMENT, p_gamma=1.0, gamma=(2.0, 2.5)),
        "noise": dataclasses.replace(NO_AUGMENT, p_noise=1.0, noise_std=0.05),
        "blur": dataclasses.replace(NO_AUGMENT, p_blur=1.0, blur_sigma=(1.5, 2.0)),
        "erase": dataclasses.replace(NO_AUGMENT, p_erase=1.0, erase_scale=(0.1, 0.2)),
    }
    torch.manual_seed(0)
    for name, cfg in only.items():
        y = Augmenter(cfg)(x)
        assert y.shape == x.shape, name
        assert 0.0 <= float(y.min()) and float(y.max()) <= 1.0, name
        assert (y - x).abs().amax(dim=(1, 2, 3)).min() > 1e-3, name  # every image changed
    inverted = Augmenter(only["invert"])(x)
    assert torch.allclose(inverted, 1 - x)
    erased = Augmenter(only["erase"])(x)
    assert ((erased == 0) & (x > 0.05)).flatten(1).any(1).all()  # a patch set to 0 in every image


def test_collimation_is_off_by_default_and_blacks_out_only_borders():
    from xrecon.sim.augment import DEFAULT_AUGMENT, FILM_AUGMENT, NO_AUGMENT, RandomCollimation

    assert DEFAULT_AUGMENT.p_collimate == 0.0 and NO_AUGMENT.p_collimate == 0.0 and FILM_AUGMENT.p_collimate > 0
    assert not any(isinstance(s, RandomCollimation) for s in Augmenter(DEFAULT_AUGMENT).steps)
    assert any(isinstance(s, RandomCollimation) for s in Augmenter(FILM_AUGMENT).steps)
    torch.manual_seed(0)
    H, W = 48, 64
    image = torch.rand(40, 1, H, W) * 0.5 + 0.5  # never 0 before collimation
    out = RandomCollimation(p=1.0, fraction=(0.05, 0.2), p_circular=0.5, rotation_deg=10.0)(image)
    centre = (slice(H // 2 - 8, H // 2 + 8), slice(W // 2 - 8, W // 2 + 8))
    torch.testing.assert_close(out[..., centre[0], centre[1]], image[..., centre[0], centre[1]])
    black = (out == 0)[:, 0]
    assert black.any(dim=(1, 2)).all()  # every image lost something
    # the black region is a border: every black pixel's outward neighbour (away from the centre) is black too
    v, u = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    du = torch.sign(u - (W - 1) / 2).long()
    dv = torch.sign(v - (H - 1) / 2).long()
    nu, nv = (u + du).clamp(0, W - 1), (v + dv).clamp(0, H - 1)
    outside = ((u + du) < 0) | ((u + du) >= W) | ((v + dv) < 0) | ((v + dv) >= H)
    outward_black = black[:, nv, nu] | outside
    assert (~black | outward_black).all()
    same = RandomCollimation(p=0.0)(image)
    torch.testing.assert_close(same, image)
