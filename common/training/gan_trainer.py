"""MCGAN training as the paper, without its code bugs, resumable bit for bit.

BCE on logits; real targets U(low, high) (one-sided smoothing, may exceed 1), fake 0; generator
loss BCE(D(G(z|y)|y), 1) with random fake conditions; Adam (0.5, 0.999); flips + zoom; real
images in [-1, 1]; `discriminator_steps` D updates per G update. Every random draw comes from
one seeded generator whose state is checkpointed with the networks, optimisers, epoch and (under
DP) the privacy ledger, so a killed run resumes exactly. On SIGTERM the last finished epoch is
checkpointed before the run stops; NaN/inf losses or weights stop it with `NonFiniteError`, the
earlier checkpoints intact.

The fast path (`gan.train.fast_loop`, `channels_last`, `precision`, `compile`; `gan_fast`,
`gan_draws`) draws the same numbers; `gan_grid` trains several GANs as one program.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from common.atomic_io import atomic_torch_save, atomic_write_png
from common.config.gan_schema import GanConfig
from common.errors import ConfigError, NonFiniteError
from common.models.mcgan import Discriminator, Generator, MCGANShape
from common.privacy.delta import check_delta
from common.privacy.dp_sgd import expected_batch_size, poisson_indices
from common.privacy.ledger import LedgerEvent, PrivacyLedger
from common.privacy.plan import PrivacyPlan, check_batch_fits, plan_privacy
from common.privacy.randomness import private_generator
from common.runs.termination import Terminated, note_saved
from common.training.gan_augment import apply_augment, to_signed_unit, to_uint8
from common.training.gan_checkpoint import restore_trainer, trainer_state
from common.training.gan_dp import PrivateDiscriminatorStep
from common.training.gan_draws import StepDraws, draw_epoch, draw_step, to_device
from common.training.gan_fast import (
    CompiledOrEager,
    autocast,
    configure_backends,
    mark_step,
    memory_format,
    probe_compiled,
    resolve_precision,
)

log = logging.getLogger(__name__)


def bce(logits: torch.Tensor, target: torch.Tensor | float) -> torch.Tensor:
    """Per-sample BCE on logits; accepts smoothed targets above 1 (the probability form refuses)."""
    if not isinstance(target, torch.Tensor):
        target = torch.full_like(logits, float(target))
    return F.binary_cross_entropy_with_logits(logits, target, reduction="none")


def _floats(values: list[torch.Tensor]) -> list[float]:
    """Device scalars to floats in one transfer (the fast loop's one host sync per epoch)."""
    return [float(v) for v in torch.stack(values).tolist()] if values else []


def shape_of(config: GanConfig) -> MCGANShape:
    """The networks' shape; DP needs GroupNorm in the discriminator (no per-sample BatchNorm)."""
    norm = "group" if config.dp.enabled else "batch"
    return MCGANShape(**dataclasses.asdict(config.model), discriminator_norm=norm)


class GanTrainer:
    def __init__(
        self,
        config: GanConfig,
        pixels: np.ndarray,
        labels: np.ndarray,
        out_dir: Path,
        device: torch.device,
        config_prefix: str = "",
    ) -> None:
        """`config_prefix`: where the GAN's settings sit in the caller's config ("gan." in a
        federated run), so refusals name the key the user sets."""
        if pixels.shape[1:] != (config.model.image_size,) * 2:
            raise ConfigError(
                f"GAN data must be {config.model.image_size}px, got {pixels.shape[1:]}"
            )
        self.config, self.out_dir, self.device = config, out_dir, device
        self.config_prefix = config_prefix
        self.data_hash = hashlib.sha256(
            pixels.tobytes() + labels.astype(np.int64).tobytes()
        ).hexdigest()
        self.real = to_signed_unit(pixels).to(device)
        self.labels = torch.as_tensor(labels, dtype=torch.long).to(device)
        torch.manual_seed(config.seed)
        shape = shape_of(config)
        t = config.train
        self.precision = resolve_precision(t, config.dp.enabled, device)
        configure_backends(t, device)
        layout = memory_format(t.channels_last)
        self.generator_net = Generator(shape).to(device, memory_format=layout)
        self.discriminator = Discriminator(shape).to(device, memory_format=layout)
        self._g = CompiledOrEager(self.generator_net, t.compile, "generator")
        self._d = CompiledOrEager(self.discriminator, t.compile, "discriminator")
        self.opt_g = torch.optim.Adam(
            self.generator_net.parameters(), t.lr_generator, (t.beta1, t.beta2)
        )
        self.opt_d = torch.optim.Adam(
            self.discriminator.parameters(), t.lr_discriminator, (t.beta1, t.beta2)
        )
        self.rng = torch.Generator().manual_seed(config.seed)  # augmentation, z, fake labels
        # Poisson batches and DP noise: OS entropy unless the seeded research mode is asked for
        # (then streams hashed from the seed and their names: `seeded_stream`)
        self.noise_seed = config.seed if config.dp.seeded_noise else None
        self.sampling_rng = private_generator("cpu", self.noise_seed, stream="dp-gan-poisson")
        self.noise_rng = private_generator(device, self.noise_seed, stream="dp-gan-noise")
        fixed = torch.Generator().manual_seed(config.seed + 2)
        k = t.samples_per_class
        self.fixed_z = torch.randn(2 * k, shape.latent_dim, generator=fixed).to(device)
        self.fixed_labels = torch.tensor([1] * k + [0] * k, device=device)
        self.epoch = 0
        self.history: list[dict[str, float]] = []
        self.plan: PrivacyPlan | None = None
        self.ledger: PrivacyLedger | None = None
        self.private: PrivateDiscriminatorStep | None = None
        if config.dp.enabled:
            self._make_private(len(labels))
        self._probe_pending = t.compile != "none"  # at the first epoch: a grid never needs it

    @property
    def compile_fallback(self) -> str | None:
        """Why torch.compile fell back to eager, if it did."""
        return self._g.fallback_reason or self._d.fallback_reason

    def _probe_compiled(self) -> None:
        self._probe_pending = False
        model = self.config.model
        probe_compiled(
            self._g,
            self._d,
            leading=(self.config.train.batch_size,),
            latent_dim=model.latent_dim,
            image_size=model.image_size,
            precision=self.precision,
            device=self.device,
        )

    def _make_private(self, n: int) -> None:
        dp = self.config.dp
        prefix = self.config_prefix
        check_delta(dp.delta, n, "patch", key=f"{prefix}dp.delta")  # D samples patches
        check_batch_fits(n, self.config.train.batch_size, key=f"{prefix}train.batch_size")
        self.plan = plan_privacy(
            dataset_size=n,
            batch_size=self.config.train.batch_size,
            epochs=self.config.train.epochs,
            target_epsilon=dp.target_epsilon,
            delta=dp.delta,
            accountant=dp.accountant,
            max_grad_norm=dp.max_grad_norm,
        )
        assert self.plan.noise_multiplier is not None
        self.ledger = PrivacyLedger(delta=dp.delta, accountant=dp.accountant)
        self.private = PrivateDiscriminatorStep(
            self.discriminator,
            noise_multiplier=self.plan.noise_multiplier,
            max_grad_norm=dp.max_grad_norm,
            expected_batch_size=expected_batch_size(n, self.plan.sample_rate),
            generator=self.noise_rng,
        )

    # ---- sampling -------------------------------------------------------------------------
    def _batches(self) -> list[torch.Tensor]:
        n = len(self.labels)
        if self.plan is not None:
            q = self.plan.sample_rate
            return [
                poisson_indices(n, q, self.sampling_rng) for _ in range(self.plan.steps_per_epoch)
            ]
        return list(torch.randperm(n, generator=self.rng).split(self.config.train.batch_size))

    def _draw_population(self) -> int | None:
        """Under DP, per-record draws are made for all N records (`gan_draws.draw_step`)."""
        return len(self.labels) if self.private is not None else None

    def _step_draws(self, idx: torch.Tensor) -> StepDraws:
        latent = self.config.model.latent_dim
        return draw_step(
            idx,
            self.rng,
            self.config.train,
            latent,
            self._fake_count(idx),
            self._draw_population(),
        )

    def _real(self, draws: StepDraws) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The augmented real batch, its labels and smoothed targets, on the device."""
        t = self.config.train
        idx = draws.indices.to(self.device)
        images = apply_augment(
            self.real[idx], draws.augment, t.flip_probability, (t.zoom_low, t.zoom_high)
        )
        return images, self.labels[idx], draws.targets.to(self.device)

    def _fake_count(self, idx: torch.Tensor) -> int:
        return self.config.train.batch_size if self.private else len(idx)

    def _generate(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with autocast(self.precision, self.device):
            return self._g(z, labels)

    def _discriminate(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with autocast(self.precision, self.device):
            logits = self._d(images, labels)
        return logits.float() if self.precision == "bf16" else logits

    # ---- one step -------------------------------------------------------------------------
    def _discriminator_step(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        """The baseline step: draws made here, one host sync for the loss."""
        draws = self._step_draws(idx)
        real, real_y, targets = self._real(draws)
        z, fake_y = draws.z.to(self.device), draws.fake_labels.to(self.device)
        fake, loss = self._discriminator_update(real, real_y, targets, z, fake_y)
        return fake, fake_y, float("nan") if loss is None else float(loss)

    def _discriminator_update(
        self,
        real: torch.Tensor,
        real_y: torch.Tensor,
        targets: torch.Tensor,
        z: torch.Tensor,
        fake_y: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One D update from given draws: the fakes and the loss (None under DP, where the
        real-batch loss is private), kept on the device."""
        mark_step(self.config.train.compile)
        fake = self._generate(z, fake_y)
        self.opt_d.zero_grad(set_to_none=True)
        loss: torch.Tensor | None = None
        if self.private is not None:
            grads = self.private.gradients(
                lambda d: bce(d(real, real_y), targets),
                lambda d: bce(d(fake.detach(), fake_y), 0.0),
            )
            for p, g in zip(self.private.parameters, grads, strict=True):
                p.grad = g
        else:
            real_loss = bce(self._discriminate(real, real_y), targets).mean() if len(real) else 0.0
            fake_loss = bce(self._discriminate(fake.detach(), fake_y), 0.0).mean()
            total = real_loss + fake_loss
            assert isinstance(total, torch.Tensor)
            total.backward()
            loss = total.detach()
        self.opt_d.step()
        return fake, loss

    def _generator_step(self, fake: torch.Tensor, fake_y: torch.Tensor) -> float:
        return float(self._generator_update(fake, fake_y))

    def _generator_update(self, fake: torch.Tensor, fake_y: torch.Tensor) -> torch.Tensor:
        self.opt_g.zero_grad(set_to_none=True)
        if self.private is not None:
            with self.private.without_hooks():
                loss = bce(self.discriminator(fake, fake_y), 1.0).mean()
                loss.backward()
        else:
            loss = bce(self._discriminate(fake, fake_y), 1.0).mean()
            loss.backward()
        self.opt_g.step()
        self.discriminator.zero_grad(set_to_none=True)
        return loss.detach()

    def _baseline_epoch(self) -> tuple[list[float], list[float]]:
        d_losses, g_losses = [], []
        for step, idx in enumerate(self._batches(), start=1):
            fake, fake_y, d_loss = self._discriminator_step(idx)
            d_losses.append(d_loss)
            if step % self.config.train.discriminator_steps == 0:
                g_losses.append(self._generator_step(fake, fake_y))
        return d_losses, g_losses

    def host_draws(self) -> list[StepDraws]:
        """This epoch's batches and host-side draws, in the baseline's order (`gan_draws`)."""
        latent = self.config.model.latent_dim
        return draw_epoch(
            self._batches(),
            self.rng,
            self.config.train,
            latent,
            self._fake_count,
            self._draw_population(),
        )

    def _fast_epoch(self) -> tuple[list[float], list[float]]:
        """The same updates from draws made at the epoch's start; one host sync at its end."""
        t = self.config.train
        d_losses: list[torch.Tensor] = []
        g_losses: list[torch.Tensor] = []
        for step, draws in enumerate(to_device(self.host_draws(), self.device), start=1):
            real, real_y, _ = self._real(draws)
            fake, d_loss = self._discriminator_update(
                real, real_y, draws.targets, draws.z, draws.fake_labels
            )
            if d_loss is not None:
                d_losses.append(d_loss)
            if step % t.discriminator_steps == 0:
                g_losses.append(self._generator_update(fake, draws.fake_labels))
        return _floats(d_losses), _floats(g_losses)

    def train_epoch(self) -> dict[str, float]:
        if self._probe_pending:
            self._probe_compiled()
        self.generator_net.train()
        self.discriminator.train()
        if self.config.train.fast_loop:
            d_losses, g_losses = self._fast_epoch()
        else:
            d_losses, g_losses = self._baseline_epoch()
        self.check_epoch(d_losses, g_losses)
        return self.finish_epoch(d_losses, g_losses)

    def check_epoch(self, d_losses: list[float], g_losses: list[float]) -> None:
        self._check_finite(g_losses if self.private else d_losses + g_losses)

    def finish_epoch(self, d_losses: list[float], g_losses: list[float]) -> dict[str, float]:
        """Count a checked epoch: its record (losses, epsilon under DP) and the ledger."""
        self.epoch += 1
        record: dict[str, float] = {"epoch": self.epoch}
        if self.private is None:  # under DP the real-batch loss is a private statistic
            record["d_loss"] = float(np.mean(d_losses)) if d_losses else np.nan
        record["g_loss"] = float(np.mean(g_losses)) if g_losses else np.nan
        if self.plan is not None and self.ledger is not None:
            assert self.plan.noise_multiplier is not None
            steps = self.plan.steps_per_epoch * self.epoch
            self.ledger.events = [
                LedgerEvent(
                    noise_multiplier=self.plan.noise_multiplier,
                    sample_rate=self.plan.sample_rate,
                    steps=steps,
                    kind="dp-gan",
                    label="mcgan-D",
                )
            ]
            record["epsilon"] = self.ledger.epsilon()
        self.history.append(record)
        return record

    def _check_finite(self, losses: list[float]) -> None:
        """Stop before a diverged epoch counts: NaN/inf in a loss (under DP only the generator's;
        the discriminator's real-batch loss is private) or in any weight of either network."""
        what = next((f"a loss is {v}" for v in losses if not math.isfinite(v)), None)
        for net in (self.generator_net, self.discriminator):
            for name, parameter in net.named_parameters():
                if what is None and not bool(torch.isfinite(parameter.detach()).all()):
                    what = f"{type(net).__name__}.{name} holds NaN or inf"
        if what is not None:
            raise NonFiniteError(
                f"MCGAN training diverged in epoch {self.epoch + 1}: {what}. This epoch was not "
                f"saved; the checkpoints in {self.out_dir / 'checkpoints'} are intact. Lower "
                "train.lr_generator / train.lr_discriminator and resume or start again"
            )

    # ---- persistence ----------------------------------------------------------------------
    def epsilon(self) -> float | None:
        return self.ledger.epsilon() if self.ledger is not None else None

    def state_dict(self) -> dict[str, Any]:
        return trainer_state(self)

    def load_state_dict(self, state: dict[str, Any], check_settings: bool = True) -> None:
        """Resume from a checkpoint (`gan_checkpoint.restore_trainer`)."""
        restore_trainer(self, state, check_settings)

    def checkpoint_path(self, epoch: int) -> Path:
        return self.out_dir / "checkpoints" / f"epoch_{epoch:05d}.pt"

    def save_checkpoint(self) -> Path:
        path = self.checkpoint_path(self.epoch)
        atomic_torch_save(path, self.state_dict())
        self.save_sample_grid(self.out_dir / "samples" / f"epoch_{self.epoch:05d}.png")
        return path

    @torch.no_grad()
    def save_sample_grid(self, path: Path) -> None:
        """Fixed noise; top row malignant, bottom row benign (generator in eval mode)."""
        self.generator_net.eval()
        images = to_uint8(self.generator_net(self.fixed_z, self.fixed_labels))
        self.generator_net.train()
        k = self.config.train.samples_per_class
        grid = np.concatenate(
            [np.concatenate(list(images[r * k : (r + 1) * k]), 1) for r in (0, 1)], 0
        )
        atomic_write_png(path, grid)

    def resume_latest(self, check_settings: bool = True) -> bool:
        checkpoints = sorted((self.out_dir / "checkpoints").glob("epoch_*.pt"))
        if not checkpoints:
            return False
        self.load_state_dict(
            torch.load(checkpoints[-1], weights_only=False, map_location=self.device),
            check_settings,
        )
        log.debug("loaded %s (epoch %d)", checkpoints[-1], self.epoch)  # callers say why
        return True

    def fit(self, progress: bool = True) -> Path | None:
        """Train up to config epochs, checkpointing every K epochs and at the end; on SIGTERM
        (`Terminated`) or Ctrl-C checkpoint the last finished epoch, then stop."""
        total, every = self.config.train.epochs, self.config.train.checkpoint_every
        last = None
        # the newest finished epoch not on disk yet (a copy: the live state may be mid-epoch)
        unsaved: dict[str, Any] | None = None
        bar = tqdm(range(self.epoch + 1, total + 1), disable=not progress, desc="gan epochs")
        try:
            for epoch in bar:
                record = self.train_epoch()
                bar.set_postfix({k: f"{v:.3f}" for k, v in record.items() if k != "epoch"})
                if epoch % every == 0 or epoch == total:
                    last = self.save_checkpoint()
                    unsaved = None
                else:
                    unsaved = copy.deepcopy(self.state_dict())
        except (Terminated, KeyboardInterrupt):  # SIGTERM or Ctrl-C: keep the last epoch
            if unsaved is not None:
                path = self.checkpoint_path(unsaved["epoch"])
                atomic_torch_save(path, unsaved)
                log.info("stopped: saved epoch %d to %s", unsaved["epoch"], path)
            note_saved(self.out_dir / "checkpoints")
            raise
        return last
