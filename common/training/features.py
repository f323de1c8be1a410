"""Frozen-backbone features, computed once per image and flip variant, in eval mode, cached.

The cache (`feature_bank`) is keyed by what changes the numbers: the backbone's architecture
and weights (checksum), the flip variants, the input format and each image's own pixels, so a stale
feature cannot be reused and a known image is never recomputed.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import re
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from common.data.images import LoadedPatches, apply_flips, to_model_input
from common.training.feature_bank import FeatureBank, image_hashes

log = logging.getLogger(__name__)


def backbone_checksum(backbone: nn.Module) -> str:
    """What the backbone computes: its architecture as printed (layers and their options,
    e.g. the pooling, which no weight shows; object addresses masked) and its weights."""
    digest = hashlib.sha256(re.sub(r"0x[0-9a-fA-F]+", "0x", repr(backbone)).encode())
    for name, tensor in backbone.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


FROZEN_GRAPH_MIN_IMAGES = 256  # below this, tracing costs more than it saves
FROZEN_GRAPH_TOLERANCE = 1e-4  # relative to the largest feature, checked on the first batch


def frozen_graph(
    backbone: nn.Module, images: torch.Tensor
) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """A frozen TorchScript copy of an eval-mode float32 backbone on CPU (BatchNorm folded into
    the convolutions, oneDNN kernels: about 1.8x eager channels-last for EfficientNet-Lite0
    here), or None where it does not apply or does not reproduce eager features on `images`
    (then the eager backbone is used)."""
    if images.device.type != "cpu" or images.dtype != torch.float32:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings: the check below decides
            graph = torch.jit.optimize_for_inference(
                torch.jit.freeze(torch.jit.trace(copy.deepcopy(backbone).eval(), images[:2]))
            )
            expected, got = backbone(images), graph(images)
    except Exception as error:  # an untraceable backbone: eager it is
        log.debug("features: no frozen graph (%s)", error)
        return None
    scale = float(expected.abs().max()) or 1.0
    if (
        got.shape != expected.shape
        or float((got - expected).abs().max()) > FROZEN_GRAPH_TOLERANCE * scale
    ):
        log.debug("features: the frozen graph differs from eager; eager is used")
        return None
    return graph


@torch.no_grad()
def extract_features(
    backbone: nn.Module,
    loaded: LoadedPatches,
    variants: tuple[int, ...],
    batch_size: int,
    device: torch.device,
    progress: bool = False,
) -> torch.Tensor:
    """Features [len(variants), N, F] (float32) with the backbone in eval mode; on CPU through a
    frozen graph when it reproduces eager features (`frozen_graph`)."""
    was_training = backbone.training
    backbone.eval().to(memory_format=torch.channels_last)  # 1.5-2x faster convs on CPU
    chunks: list[list[torch.Tensor]] = [[] for _ in variants]
    total = len(loaded.pixels)
    bar = tqdm(total=total * len(variants), disable=not progress, desc="features", unit="img")
    run: Callable[[torch.Tensor], torch.Tensor] = backbone
    try:
        for start in range(0, total, batch_size):
            dtype = next(backbone.parameters()).dtype
            images = to_model_input(loaded.pixels[start : start + batch_size]).to(device, dtype)
            images = images.contiguous(memory_format=torch.channels_last)
            if start == 0 and total * len(variants) >= FROZEN_GRAPH_MIN_IMAGES:
                run = frozen_graph(backbone, images) or backbone
            for slot, variant in enumerate(variants):
                flips = torch.full((images.shape[0],), variant, device=device)
                chunks[slot].append(run(apply_flips(images, flips)).cpu())
                bar.update(images.shape[0])
    finally:
        bar.close()
        backbone.train(was_training).to(memory_format=torch.contiguous_format)
    return torch.stack([torch.cat(c) for c in chunks])


def cached_features(
    backbone: nn.Module,
    loaded: LoadedPatches,
    variants: tuple[int, ...],
    batch_size: int,
    device: torch.device,
    cache_dir: str | None,
    progress: bool = False,
    kind: str = "",
) -> torch.Tensor:
    """`extract_features`, each image's features read from / added to the feature bank in
    `cache_dir` when given (see `feature_bank`): only images the bank lacks go through the
    backbone, whatever manifest, subset or order they arrive in. `kind` names what `backbone`
    outputs when it is not a whole backbone's pooled features (e.g. a trunk's maps): it is part
    of the bank's key, so two kinds of output never share a bank."""
    if not cache_dir:
        return extract_features(backbone, loaded, variants, batch_size, device, progress)
    checksum = backbone_checksum(backbone) + (f"|{kind}" if kind else "")
    bank = FeatureBank(Path(cache_dir), checksum, variants)
    hashes = image_hashes(loaded.pixels)
    found, missing = bank.lookup(hashes)
    if missing:
        log.debug("features: %d of %d images not in %s", len(missing), len(hashes), bank.folder)
        new = LoadedPatches(loaded.patch_set.subset(missing), loaded.pixels[missing])
        computed = extract_features(backbone, new, variants, batch_size, device, progress)
        unique = {h: k for k, h in enumerate(hashes[i] for i in missing)}  # repeats stored once
        bank.add(list(unique), computed[:, list(unique.values())])
        found |= {position: computed[:, k] for k, position in enumerate(missing)}
    return torch.stack([found[p] for p in range(len(hashes))], dim=1)
