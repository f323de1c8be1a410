"""Shared synthetic pretraining (the paper's SynPre): all parameters, pooled synthetic patches
from every site, no DP (the patches already left the sites; what covers them is their
provenance: a DP-MCGAN's epsilon, or no formal guarantee)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from common.config.federated_schema import FederatedRunConfig
from common.data.images import LoadedPatches
from common.data.patch_set import PatchRecord, PatchSet
from common.models.classifier import Classifier
from common.models.policies import apply_trainable_policy
from common.privacy.ledger import PrivacyLedger
from common.training.fit import fit
from common.training.settings import EngineSettings


@dataclass
class SyntheticPool:
    patches: LoadedPatches
    provenance: dict[str, dict[str, Any]]  # per site


def synthetic_summary(synthetic: tuple[np.ndarray, np.ndarray, dict[str, Any]]) -> str:
    """One log line for a site's accepted synthetic set: what the README promises happened at
    the site (an MCGAN trained there, its patches memorisation-checked or covered by DP).
    Formats what the site sent as it is: a provenance field of an unexpected type is printed,
    never a crash of the run."""
    pixels, _, provenance = synthetic
    if provenance.get("dp") is True:
        privacy = f"DP-MCGAN, epsilon {provenance.get('epsilon')!s:.8}"
    else:
        privacy = "MCGAN without DP"
    return (
        f"{len(pixels)} synthetic patches from its {privacy}; memorisation check: "
        f"{provenance.get('memorisation_check')!s:.80}"
    )


def pool_synthetic(
    sets: dict[str, tuple[np.ndarray, np.ndarray, dict[str, Any]]],
) -> SyntheticPool:
    """One training set from every site's (pixels, labels, provenance)."""
    records, pixels = [], []
    for site, (images, labels, _) in sorted(sets.items()):
        for index, label in enumerate(labels.tolist()):
            records.append(
                PatchRecord(
                    path=f"synthetic://{site}/{index}",
                    label=int(label),
                    patient_id=f"synthetic:{site}:{index}",
                    site=site,
                    source="synthetic",
                    provenance_file=f"mcgan@{site}",
                )
            )
        pixels.append(images)
    patches = LoadedPatches(PatchSet(records, name="synthetic-pool"), np.concatenate(pixels))
    return SyntheticPool(patches, {site: prov for site, (_, _, prov) in sets.items()})


def pretrain(
    model: Classifier, pool: SyntheticPool, config: FederatedRunConfig, device: torch.device
) -> list[dict[str, Any]]:
    """Train every parameter on the pool (last epoch kept); then restore the run's trainable
    policy. Returns the per-epoch training losses (synthetic data: not private)."""
    apply_trainable_policy(model, "all")
    synpre = config.synpre
    settings = EngineSettings(
        batch_size=synpre.batch_size,
        lr=synpre.lr,
        weight_decay=synpre.weight_decay,
        label_smoothing=config.train.label_smoothing,
        flips=config.train.flips,
        seed=config.seed,
        device=device,
        # synthetic data only and no DP: BatchNorm may learn its statistics here
        backbone_train_mode=True,
        feature_batch_size=config.train.feature_batch_size,
    )
    result = fit(
        model,
        "naive",
        pool.patches,
        None,
        settings,
        epochs=synpre.epochs,
        ledger=PrivacyLedger(),
        selection="last",
    )
    apply_trainable_policy(model, config.model.trainable)
    model.eval()
    return [{"epoch": h.epoch, "train_loss": h.train_loss} for h in result.history]
