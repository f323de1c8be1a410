"""GAN data helpers: [-1, 1] scaling, flips + zoom augmentation, and the clipping uint8 output.

The reference code left real images in [0, 1] while the generator outputs [-1, 1], and wrapped
negative values when saving; both are fixed here.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def to_signed_unit(pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 [N, H, W] -> float [N, 1, H, W] in [-1, 1]."""
    return torch.as_tensor(pixels).float().div(127.5).sub(1.0).unsqueeze(1)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[-1, 1] float [N, 1, H, W] -> uint8 [N, H, W]; out-of-range values clip, never wrap."""
    scaled = (images.detach().float().clamp(-1.0, 1.0) + 1.0) * 127.5
    return scaled.round().to(torch.uint8).squeeze(1).cpu().numpy()


def augment(
    images: torch.Tensor,
    generator: torch.Generator,
    flip_probability: float,
    zoom: tuple[float, float],
) -> torch.Tensor:
    """Random horizontal/vertical flips and an isotropic zoom in [low, high] (below 1 zooms out,
    which torchvision's RandomResizedCrop cannot), with reflected borders."""
    n = images.shape[0]
    if n == 0:
        return images
    draws = torch.rand(n, 3, generator=generator)
    return apply_augment(images, draws, flip_probability, zoom)


def apply_augment(
    images: torch.Tensor, draws: torch.Tensor, flip_probability: float, zoom: tuple[float, float]
) -> torch.Tensor:
    """`augment` with its draws [N, 3] in [0, 1) given (x flip, y flip, zoom): theta is built
    where the draws are, so an epoch's draws made up front (`gan_draws`) stay on the device."""
    n = images.shape[0]
    if n == 0:
        return images
    sign_x = torch.where(draws[:, 0] < flip_probability, -1.0, 1.0)
    sign_y = torch.where(draws[:, 1] < flip_probability, -1.0, 1.0)
    scale = zoom[0] + (zoom[1] - zoom[0]) * draws[:, 2]
    theta = torch.zeros(n, 2, 3, device=draws.device)
    theta[:, 0, 0] = sign_x / scale
    theta[:, 1, 1] = sign_y / scale
    theta = theta.to(images.device, images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(
        images, grid, mode="bilinear", padding_mode="reflection", align_corners=False
    )
