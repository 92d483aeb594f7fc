"""Domain randomisation for simulated X-rays, applied at load time (seed 002:
random inversion, colour jitter, random erasing; plus gamma, noise and blur).

Images are first scaled to [0, 1] per image (:func:`normalise_image`); the
augmentations are kornia's, so they draw from torch's global generator (a
``DataLoader`` seeds it per worker from the training seed). Geometry is never
changed, so the per-pixel ground truth stays valid (random erasing hides image
content only; the targets keep their values).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and ranges of each augmentation (0 disables one).

    Attributes:
        p_invert: probability of ``x -> 1 - x`` (bone dark instead of bright).
        p_contrast, contrast: probability and factor range of a contrast change.
        p_brightness, brightness: probability and additive range of a brightness change.
        p_gamma, gamma: probability and exponent range.
        p_noise, noise_std: probability and std of additive Gaussian noise.
        p_blur, blur_sigma: probability and sigma range (px) of a Gaussian blur.
        p_erase, erase_scale: probability and area fraction range of random erasing.
    """

    p_invert: float = 0.5
    p_contrast: float = 0.8
    contrast: tuple[float, float] = (0.6, 1.4)
    p_brightness: float = 0.8
    brightness: tuple[float, float] = (-0.2, 0.2)
    p_gamma: float = 0.5
    gamma: tuple[float, float] = (0.7, 1.5)
    p_noise: float = 0.5
    noise_std: float = 0.03
    p_blur: float = 0.3
    blur_sigma: tuple[float, float] = (0.1, 1.5)
    p_erase: float = 0.5
    erase_scale: tuple[float, float] = (0.02, 0.15)

    def to_dict(self) -> dict:
        return asdict(self)


#: Seed 002's augmentation (inversion, colour jitter, random erasing) with the
#: extra gamma / noise / blur of the issue.
DEFAULT_AUGMENT = AugmentConfig()

#: Nothing changes (for validation and test sets).
NO_AUGMENT = AugmentConfig(0.0, 0.0, (1.0, 1.0), 0.0, (0.0, 0.0), 0.0, (1.0, 1.0), 0.0, 0.0, 0.0, (0.1, 0.1), 0.0, (0.02, 0.02))


def normalise_image(image: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Scale each image of ``image: (B, C, H, W)`` to [0, 1] by its own min and max."""
    lo = image.amin(dim=(-1, -2, -3), keepdim=True)
    hi = image.amax(dim=(-1, -2, -3), keepdim=True)
    return (image - lo) / (hi - lo).clamp(min=eps)


class Augmenter(torch.nn.Module):
    """``forward(image: (B, 1, H, W) in [0, 1]) -> (B, 1, H, W)`` randomised, clipped to [0, 1]."""

    def __init__(self, config: AugmentConfig = DEFAULT_AUGMENT):
        super().__init__()
        import kornia.augmentation as KA

        self.config = c = config
        steps = []
        if c.p_invert > 0:
            steps.append(KA.RandomInvert(p=c.p_invert))
        if c.p_contrast > 0:
            steps.append(KA.RandomContrast(contrast=c.contrast, clip_output=True, p=c.p_contrast))
        if c.p_brightness > 0:
            steps.append(KA.RandomBrightness(brightness=(1.0 + c.brightness[0], 1.0 + c.brightness[1]), clip_output=True, p=c.p_brightness))
        if c.p_gamma > 0:
            steps.append(KA.RandomGamma(gamma=c.gamma, p=c.p_gamma))
        if c.p_blur > 0:
            steps.append(KA.RandomGaussianBlur(kernel_size=(5, 5), sigma=c.blur_sigma, p=c.p_blur))
        if c.p_noise > 0:
            steps.append(KA.RandomGaussianNoise(mean=0.0, std=c.noise_std, p=c.p_noise))
        if c.p_erase > 0:
            steps.append(KA.RandomErasing(scale=c.erase_scale, ratio=(0.3, 3.3), value=0.0, p=c.p_erase))
        self.steps = torch.nn.Sequential(*steps)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if len(self.steps) == 0:
            return image
        return self.steps(image).clamp(0.0, 1.0)
