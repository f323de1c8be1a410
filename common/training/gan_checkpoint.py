"""What an MCGAN checkpoint holds and what a resume may change.

A checkpoint is the whole training state: networks, optimisers, epoch, the seeded augmentation
generator, under DP the ledger and plan (and the private generators only in the marked seeded
mode), the config and the data's hash. A resume restores it so the run continues bit for bit,
and refuses other data, another privacy plan, or (unless a site reuses its own MCGAN) other
model/training settings.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from common.config.gan_schema import GanConfig
from common.config.recorded_diff import changed_sections
from common.errors import ConfigError, PrivacyError
from common.privacy.ledger import PrivacyLedger
from common.privacy.randomness import SEEDED_NOISE_NOTE

if TYPE_CHECKING:
    from common.training.gan_trainer import GanTrainer

# what a resume may change: how long (without DP: under DP the plan fixes it), how often it
# saves and shows samples, where and how fast it runs, and the learning rates (set after the
# optimiser state is loaded: the way out of a divergence, see NonFiniteError)
RESUMABLE_TRAIN_KEYS = frozenset(
    f"train.{key}"
    for key in (
        "epochs",
        "checkpoint_every",
        "samples_per_class",
        "device",
        "fast_loop",
        "channels_last",
        "precision",
        "compile",
        "lr_generator",
        "lr_discriminator",
    )
)


def changed_training(recorded: dict[str, Any], config: GanConfig, prefix: str = "") -> list[str]:
    """`key: was -> now` for each model / train setting (and the seed) that a checkpoint's
    recorded config has otherwise, bar RESUMABLE_TRAIN_KEYS; keys an older checkpoint lacks
    are not compared. `prefix`: where the GAN's settings sit in the caller's config."""
    changes = changed_sections(
        recorded,
        dataclasses.asdict(config),
        ("model", "train"),
        skip=RESUMABLE_TRAIN_KEYS,
        prefix=prefix,
    )
    if "seed" in recorded and recorded["seed"] != config.seed:
        changes.append(f"seed: {recorded['seed']!r} -> {config.seed!r}")
    return changes


def trainer_state(trainer: GanTrainer) -> dict[str, Any]:
    """The checkpoint of `trainer` (tensors by reference: copy before training on)."""
    seeded = trainer.noise_seed is not None
    return {
        "generator": trainer.generator_net.state_dict(),
        "discriminator": trainer.discriminator.state_dict(),
        "opt_g": trainer.opt_g.state_dict(),
        "opt_d": trainer.opt_d.state_dict(),
        "epoch": trainer.epoch,
        "rng": trainer.rng.get_state(),
        # private generators are stored only in the seeded research mode
        "private_rng": (
            (trainer.sampling_rng.get_state(), trainer.noise_rng.get_state()) if seeded else None
        ),
        "noise": SEEDED_NOISE_NOTE if seeded else "os-entropy",
        "ledger": trainer.ledger.state_dict() if trainer.ledger is not None else None,
        "plan": trainer.plan.to_dict() if trainer.plan is not None else None,
        "history": trainer.history,
        "config": dataclasses.asdict(trainer.config),
        "data_sha256": trainer.data_hash,
    }


def restore_trainer(trainer: GanTrainer, state: dict[str, Any], check_settings: bool) -> None:
    """Load a checkpoint into `trainer`. Raises ConfigError for other data or (with
    `check_settings`) other gan.model / gan.train settings or seed (`changed_training`);
    PrivacyError for a DP/non-DP mismatch or another privacy plan. A site reusing its own
    MCGAN across runs passes check_settings=False (common.site.synthetic)."""
    if state["data_sha256"] != trainer.data_hash:
        raise ConfigError("this checkpoint was trained on other data; resume with the same data")
    recorded = state.get("config", {})
    changed = (
        changed_training(recorded, trainer.config, trainer.config_prefix) if check_settings else []
    )
    if changed:
        raise ConfigError(
            f"this checkpoint was trained with other settings ({'; '.join(changed)}); "
            "resume with the original ones, or train into a new out_dir"
        )
    if (state["ledger"] is None) != (trainer.ledger is None):
        raise PrivacyError("cannot resume a DP run without DP or the reverse")
    if trainer.plan is not None and state["plan"] != trainer.plan.to_dict():
        raise PrivacyError(
            "the privacy plan changed since the checkpoint (epochs, batch, data or epsilon): "
            "resume with the original settings"
        )
    trainer.generator_net.load_state_dict(state["generator"])
    trainer.discriminator.load_state_dict(state["discriminator"])
    trainer.opt_g.load_state_dict(state["opt_g"])
    trainer.opt_d.load_state_dict(state["opt_d"])
    # the configured learning rates, not the checkpoint's (lowering them is the way to resume
    # after a divergence)
    for group in trainer.opt_g.param_groups:
        group["lr"] = trainer.config.train.lr_generator
    for group in trainer.opt_d.param_groups:
        group["lr"] = trainer.config.train.lr_discriminator
    trainer.epoch = int(state["epoch"])
    trainer.rng.set_state(state["rng"])
    if state.get("private_rng") is not None and trainer.noise_seed is not None:
        trainer.sampling_rng.set_state(state["private_rng"][0])
        trainer.noise_rng.set_state(state["private_rng"][1])
    trainer.history = list(state["history"])
    if trainer.ledger is not None:
        trainer.ledger = PrivacyLedger.from_state_dict(state["ledger"])
