"""Procedural breast anatomy for phantom mammograms: outline, parenchyma, masses.

Benign masses are round/oval with circumscribed margins; malignant ones irregular with branching
spicules (after VICTRE's breast-mass model: a Gaussian-random-sphere body, bumps, spicules).
Size and contrast come from the same distributions for both classes, so shape and margin carry
the label. All maps are attenuation-like floats in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


def breast_outline(height: int, width: int, view: str, rng: np.random.Generator) -> np.ndarray:
    """Breast region (float mask, chest wall on the left): a half ellipse; MLO adds a pectoral
    muscle triangle in the top-left corner (value 2 marks the muscle)."""
    # a column and a row that broadcast: the same float32 values as a full mgrid, a fraction
    # of its memory and time at 2000 px
    yy = np.arange(height, dtype=np.float32)[:, None]
    xx = np.arange(width, dtype=np.float32)[None, :]
    depth = width * rng.uniform(0.75, 0.9)
    half_height = height * rng.uniform(0.42, 0.48)
    centre = height * rng.uniform(0.48, 0.52)
    region = ((xx / depth) ** 2 + ((yy - centre) / half_height) ** 2 <= 1.0).astype(np.float32)
    if view == "MLO":
        reach = width * rng.uniform(0.25, 0.4)
        muscle = (xx / reach + yy / (height * rng.uniform(0.35, 0.5))) <= 1.0
        region = np.where(muscle, 2.0, np.maximum(region, (yy < centre) & (xx < depth * 0.6)))
    return cv2.GaussianBlur(region, (0, 0), sigmaX=width / 200)


def parenchyma(height: int, width: int, rng: np.random.Generator, density: float) -> np.ndarray:
    """Fibroglandular texture: power-law-like noise (sum of octaves) made at 1/4 size, upsampled."""
    small_h, small_w = max(8, height // 4), max(8, width // 4)
    texture = np.zeros((small_h, small_w), np.float32)
    for octave in range(1, 6):
        sigma = small_w / 2 ** (octave + 1)
        noise = cv2.GaussianBlur(
            rng.standard_normal((small_h, small_w)).astype(np.float32), (0, 0), sigma
        )
        texture += noise / (noise.std() + 1e-6) * 0.6**octave
    texture = (texture - texture.mean()) / (texture.std() + 1e-6)
    glandular = 1 / (1 + np.exp(-(texture - (1 - 2 * density)) * 2.0))
    return cv2.resize(glandular, (width, height), interpolation=cv2.INTER_LINEAR)


@dataclass(frozen=True)
class Mass:
    body: np.ndarray  # [S, S] float in [0, 1], the lesion's attenuation
    mask: np.ndarray  # [S, S] uint8, the outline a radiologist would draw (body only)


def _radial_profile(
    rng: np.random.Generator, malignant: bool, count: int = 360, conspicuity: float = 1.0
) -> np.ndarray:
    angles = np.linspace(0, 2 * np.pi, count, endpoint=False)
    radius = np.ones(count)
    orders = range(2, 12) if malignant else range(2, 4)
    lobes = conspicuity if malignant else 1.0
    for k in orders:
        amplitude = rng.uniform(0.04, 0.12) if malignant else rng.uniform(0.0, 0.12)
        radius += lobes * amplitude * np.cos(k * angles + rng.uniform(0, 2 * np.pi))
    if malignant:  # bumps
        for _ in range(rng.integers(3, 7)):
            centre = rng.uniform(0, 2 * np.pi)
            radius += (
                lobes
                * rng.uniform(0.08, 0.2)
                * np.exp(-(((angles - centre + np.pi) % (2 * np.pi) - np.pi) ** 2) / 0.02)
            )
    return radius


def make_mass(
    rng: np.random.Generator,
    malignant: bool,
    radius: float,
    contrast: float,
    conspicuity: float = 1.0,
) -> Mass:
    """`conspicuity` scales what marks a malignant mass (lobulation, spicule width), e.g. so
    that it survives downsampling to a 32 px patch; 1.0 is the default phantom."""
    size = int(radius * 5)
    centre = size / 2
    profile = _radial_profile(rng, malignant, conspicuity=conspicuity)
    profile /= np.sqrt((profile**2).mean())  # same area (pi r^2) whatever the shape
    angles = np.linspace(0, 2 * np.pi, len(profile), endpoint=False)
    points = np.stack(
        [centre + radius * profile * np.cos(angles), centre + radius * profile * np.sin(angles)], 1
    )
    mask = np.zeros((size, size), np.uint8)
    cv2.fillPoly(mask, [np.round(points).astype(np.int32)], 1)
    body = mask.astype(np.float32)
    if malignant:
        spicules = np.zeros_like(body)
        for _ in range(rng.integers(8, 16)):
            angle = rng.uniform(0, 2 * np.pi)
            _spicule(
                spicules,
                (centre, centre),
                angle,
                radius * rng.uniform(1.4, 2.3),
                radius,
                rng,
                depth=2,
                width=conspicuity,
            )
        # ill-defined margin and spicules outside the outline
        body = np.maximum(
            cv2.GaussianBlur(body, (0, 0), radius * 0.06), spicules * 0.7 * (1 - mask)
        )
    else:
        body = cv2.GaussianBlur(body, (0, 0), radius * 0.03)  # circumscribed: a sharp margin
    return Mass(body * contrast, mask)


def _spicule(
    canvas: np.ndarray,
    centre: tuple[float, float],
    angle: float,
    length: float,
    radius: float,
    rng: np.random.Generator,
    depth: int,
    width: float = 1.0,
) -> None:
    start = np.array(centre) + 0.8 * radius * np.array([np.cos(angle), np.sin(angle)])
    end = np.array(centre) + length * np.array([np.cos(angle), np.sin(angle)])
    thickness = max(1, int(radius * 0.05 * width))
    cv2.line(
        canvas, tuple(np.round(start).astype(int)), tuple(np.round(end).astype(int)), 1.0, thickness
    )
    if depth > 0 and rng.random() < 0.6:  # a branch from the middle
        middle = (start + end) / 2
        branch = angle + rng.choice([-1, 1]) * rng.uniform(0.3, 0.7)
        _spicule(
            canvas,
            tuple(middle - 0.8 * radius * np.array([np.cos(branch), np.sin(branch)])),
            branch,
            length * 0.5 + 0.8 * radius,
            radius,
            rng,
            depth - 1,
            width,
        )
