"""Backbone-feature Frechet distance of each MCGAN checkpoint's samples to the real patches.

    .venv/bin/python -m simulations.gan_fid_curve run_dir=DIR [n=500] [backbone=efficientnet_lite0]

Real patches and samples both go through the GAN's resolution and then the classifier's 224 px
preprocessing, so the distance measures the generator, not the resizing. Prints one line per
checkpoint and writes DIR/fid_curve.csv.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from common.atomic_io import atomic_write_text
from common.config.option_values import key_values, whole_number
from common.data.images import LoadedPatches, load_patches, resized
from common.data.patch_set import PatchRecord, PatchSet
from common.data.readers import read_patch_source
from common.errors import ConfigError
from common.eval.fidelity import frechet_distance
from common.training.gan_augment import to_uint8
from common.training.gan_generate import load_generator
from simulations.gan_cli import backbone_features


def _upsampled(pixels: np.ndarray, labels: list[int], size: int = 224) -> LoadedPatches:
    wide = resized(pixels, size)
    records = [PatchRecord(f"/memory/{i}.png", int(y), f"m{i}") for i, y in enumerate(labels)]
    return LoadedPatches(PatchSet(records), wide)


@torch.no_grad()
def samples(checkpoint: Path, n: int, seed: int = 0) -> tuple[np.ndarray, list[int]]:
    generator, _ = load_generator(checkpoint)
    labels = [1] * (n - n // 2) + [0] * (n // 2)
    z = torch.randn(n, generator.shape.latent_dim, generator=torch.Generator().manual_seed(seed))
    return to_uint8(generator(z, torch.tensor(labels))), labels


def main(argv: list[str]) -> None:
    options = key_values(argv, ("run_dir", "n", "backbone"))
    if "run_dir" not in options:
        raise ConfigError("usage: python -m simulations.gan_fid_curve run_dir=DIR [n=500]")
    run_dir, n = Path(options["run_dir"]), whole_number("n", options.get("n", 500), minimum=2)
    backbone = options.get("backbone", "efficientnet_lite0")
    checkpoints = sorted((run_dir / "checkpoints").glob("epoch_*.pt"))
    _, state = load_generator(checkpoints[0])
    from omegaconf import OmegaConf

    from common.config.gan_schema import GanConfig

    config = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(GanConfig), state["config"]))
    assert isinstance(config, GanConfig)
    real_set = read_patch_source(config.data, default_split="train")
    real = load_patches(real_set, config.model.image_size)
    real_features = backbone_features(
        {"real": _upsampled(real.pixels, real.patch_set.labels)}, backbone
    )["real"]
    rows = []
    for checkpoint in checkpoints:
        pixels, labels = samples(checkpoint, n)
        fake = backbone_features({"fake": _upsampled(pixels, labels)}, backbone)["fake"]
        epoch = int(checkpoint.stem.split("_")[1])
        rows.append({"epoch": epoch, "fd_backbone": frechet_distance(real_features, fake)})
        print(f"epoch {epoch:5d}  FD({backbone}) = {rows[-1]['fd_backbone']:.2f}", flush=True)
    atomic_write_text(run_dir / "fid_curve.csv", pd.DataFrame(rows).to_csv(index=False))


if __name__ == "__main__":
    from simulations.cli import script_main

    script_main("gan_fid_curve", main)
