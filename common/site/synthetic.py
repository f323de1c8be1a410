"""A site's MCGAN: trained on its own training patients, its samples checked for memorisation
before they leave the site.

With `gan.dp.enabled` the discriminator runs DP-SGD and its whole planned run is reserved in the
site's ledger before the first step (settled after), so the GAN's epsilon is composed into the
site's total. Without DP the ledger records a use with no formal guarantee, and the provenance
sent with the patches says so (as in the paper). A synthetic patch whose best normalised
cross-correlation with a real training patch (over flips and small shifts) exceeds the
real-vs-real reference is regenerated, up to `ATTEMPTS` times, then dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from common.config.federated_schema import FederatedRunConfig
from common.config.gan_schema import GanConfig
from common.data.images import LoadedPatches
from common.eval.memorisation import memorisation_check
from common.privacy.ledger import LedgerEvent, PrivacyLedger
from common.privacy.randomness import SEEDED_NOISE_NOTE
from common.site.facts import SiteFacts
from common.training.gan_augment import to_uint8
from common.training.gan_trainer import GanTrainer
from common.training.settings import resolve_device

log = logging.getLogger(__name__)
ATTEMPTS = 3
NO_GUARANTEE = "MCGAN trained without DP on the site's training patches: no formal guarantee"
MEMORISATION_SKIPPED_DP = "skipped: DP-MCGAN (covered by its guarantee)"


@dataclass
class SyntheticSet:
    pixels: np.ndarray  # uint8 [n, S, S]
    labels: np.ndarray  # int64 [n], 1 = malignant
    provenance: dict[str, Any]  # public facts only: no counts, paths, hashes or seeds


def train_site_gan(
    facts: SiteFacts,
    config: FederatedRunConfig,
    train: LoadedPatches,
    ledger: PrivacyLedger,
    budget: float,
    persist: Callable[[PrivacyLedger], None],
) -> GanTrainer:
    """Train (or resume, or load) the site's MCGAN on its DP training records."""
    seeded = config.gan.dp.enabled and config.gan.dp.seeded_noise
    gan_config = GanConfig(
        model=config.gan.model,
        train=config.gan.train,
        dp=config.gan.dp,
        site=facts.name,
        # the seeded research mode draws its noise from the site's own seed, never the run's
        seed=facts.noise_seed if seeded and facts.noise_seed is not None else config.seed,
    )
    trainer = GanTrainer(
        gan_config,
        train.pixels,
        np.asarray(train.patch_set.labels),
        facts.state_dir / "gan",
        resolve_device(facts.device),
        config_prefix="gan.",
    )
    # a site reuses its own MCGAN (and its charge) across runs, whatever a later run's seed or
    # gan.train settings: only its data and, under DP, its plan must be the same
    resumed = trainer.resume_latest(check_settings=False)
    if resumed:
        log.info("site %s: reuses its trained MCGAN (epoch %d)", facts.name, trainer.epoch)
    done = trainer.epoch >= gan_config.train.epochs
    reservation = None
    if trainer.plan is not None:
        assert trainer.plan.noise_multiplier is not None
        gan_events = [i for i, e in enumerate(ledger.events) if e.kind == "dp-gan"]
        last = ledger.events[gan_events[-1]] if gan_events else None
        if resumed and last is not None and (done or last.status == "reserved"):
            # an interrupted run resumes in the charge it reserved when it started; a finished
            # one is reused as it is
            reservation = gan_events[-1]
        else:
            # a first run, or its checkpoints gone (a new run on the data): the whole plan;
            # a settled run resumed from an earlier epoch (its later checkpoints gone): the
            # epochs trained again are a new use of the data (the first run's samples may
            # have left the site). A checkpoint with no charge in the ledger (restored from
            # an older backup) is charged in full: its training is on no record
            steps = trainer.plan.steps
            if resumed and last is not None:
                epochs_left = gan_config.train.epochs - trainer.epoch
                steps = trainer.plan.steps_per_epoch * epochs_left
            event = LedgerEvent(
                noise_multiplier=trainer.plan.noise_multiplier,
                sample_rate=trainer.plan.sample_rate,
                steps=steps,
                kind="dp-gan",
                label="mcgan-D",
            )
            ledger.check_within(event, budget)
            reservation = ledger.reserve(event)
            persist(ledger)
    else:
        ledger.record_non_dp_use("mcgan", NO_GUARANTEE)
        persist(ledger)
    if not done:
        trainer.fit(progress=False)
    if reservation is not None and ledger.events[reservation].status == "reserved":
        assert trainer.plan is not None
        # the steps taken, at most the reservation's (a charge from a later epoch covers the
        # epochs from there; one that stopped early is rounded up, never down)
        taken = trainer.plan.steps_per_epoch * trainer.epoch
        ledger.settle(reservation, steps=min(taken, ledger.events[reservation].steps))
        persist(ledger)
    return trainer


@torch.no_grad()
def _sample(trainer: GanTrainer, labels: np.ndarray, rng: torch.Generator) -> np.ndarray:
    generator = trainer.generator_net.eval()
    device = next(generator.parameters()).device
    z = torch.randn(len(labels), trainer.config.model.latent_dim, generator=rng).to(device)
    images = to_uint8(generator(z, torch.as_tensor(labels, dtype=torch.long, device=device)))
    return np.asarray(images, dtype=np.uint8)


def generate_checked(
    trainer: GanTrainer,
    train: LoadedPatches,
    count: int,
    seed: int,
    check: bool,
) -> SyntheticSet:
    """`count` patches (half malignant), each passing the memorisation check when `check`."""
    labels = np.array([1] * (count - count // 2) + [0] * (count // 2), dtype=np.int64)
    rng = torch.Generator().manual_seed(seed)  # generation is post-processing: not private
    pixels = _sample(trainer, labels, rng)
    keep = np.ones(count, bool)
    dp = trainer.plan is not None
    # a DP-MCGAN's samples are covered by its guarantee; a filter that looks at the private
    # patches to pick which samples leave would void it, so it only runs without DP
    if check and not dp:
        for _ in range(ATTEMPTS):
            report = memorisation_check(pixels, train.pixels, train.patch_set.patients)
            flagged = np.array(report.flagged, dtype=int)
            keep[:] = True
            if not len(flagged):
                break
            keep[flagged] = False
            pixels[flagged] = _sample(trainer, labels[flagged], rng)
        else:
            report = memorisation_check(pixels, train.pixels, train.patch_set.patients)
            keep[:] = True
            keep[np.array(report.flagged, dtype=int)] = False
    provenance = {
        "generator": "mcgan",
        "dp": dp,
        "epsilon": trainer.epsilon(),
        "delta": trainer.config.dp.delta if dp else None,
        "formal_guarantee": dp,
        "note": "" if dp else NO_GUARANTEE,
        "memorisation_check": MEMORISATION_SKIPPED_DP if dp else ("filtered" if check else "off"),
        "noise": (
            None
            if not dp
            else SEEDED_NOISE_NOTE
            if trainer.noise_seed is not None
            else "os-entropy"
        ),
        "image_size": int(pixels.shape[-1]),
    }
    return SyntheticSet(pixels[keep], labels[keep], provenance)
