"""Several non-DP MCGANs of one grid (seeds and/or sites) trained as one batched program.

The G GANs' networks run stacked (`mcgan_stack`: grouped convolutions); one Adam over the
stacked tensors is G Adams (it is elementwise, same settings, same step count). Each GAN keeps
its own `GanTrainer`: its data, its sampling and noise stream (its generator, drawn in the
baseline's order, `gan_draws`), its Adam state, history, checkpoints and resume. After every
epoch the stack is written back into the trainers, so their checkpoints are the ordinary ones
(`mammofl gan generate` reads them) and a trainer can go on alone.

DP is refused: the stacked discriminator has no exact per-sample clipping (opacus hooks need the
ordinary modules); train DP-MCGANs one by one.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from common.atomic_io import atomic_torch_save
from common.errors import ConfigError
from common.models.mcgan_stack import StackedDiscriminator, StackedGenerator, StackedMCGAN
from common.runs.termination import Terminated, note_saved
from common.training.gan_augment import apply_augment
from common.training.gan_draws import StepDraws, stack_draws, to_device
from common.training.gan_fast import (
    CompiledOrEager,
    autocast,
    mark_step,
    memory_format,
    probe_compiled,
)
from common.training.gan_trainer import GanTrainer, bce

log = logging.getLogger(__name__)


def check_compatible(trainers: Sequence[GanTrainer]) -> None:
    """One program needs one shape and one schedule: same model and training settings, as many
    records, same device and epoch; no DP. Seeds, data and out_dir may differ."""
    if not trainers:
        raise ConfigError("a GAN grid needs at least one GAN")
    first = trainers[0]
    if len({t.out_dir.resolve() for t in trainers}) < len(trainers):
        raise ConfigError("batched GANs need an out_dir each (their checkpoints would mix)")
    for t in trainers:
        if t.config.dp.enabled:
            raise ConfigError(
                f"{t.out_dir}: the batched GAN program trains non-DP MCGANs only (the stacked "
                "discriminator has no exact per-sample clipping); train DP-MCGANs one by one "
                "with GanTrainer (gan.dp.enabled=true), or set gan.dp.enabled=false"
            )
        for part in ("model", "train"):
            a, b = getattr(first.config, part), getattr(t.config, part)
            differ = [
                f.name for f in dataclasses.fields(a) if getattr(a, f.name) != getattr(b, f.name)
            ]
            if differ:
                raise ConfigError(
                    f"{t.out_dir}: gan.{part}.{differ[0]} differs from {first.out_dir}'s; the "
                    f"GANs of one batched program share gan.model and gan.train (seed, data and "
                    "out_dir may differ)"
                )
        if len(t.labels) != len(first.labels):
            raise ConfigError(
                f"{t.out_dir} has {len(t.labels)} training patches, {first.out_dir} "
                f"{len(first.labels)}: batched GANs need as many (one batch size per step); "
                "train the others separately"
            )
        if t.device != first.device or t.epoch != first.epoch:
            raise ConfigError(
                f"{t.out_dir}: device {t.device} epoch {t.epoch} vs {first.device} epoch "
                f"{first.epoch}: batched GANs run on one device from the same epoch"
            )


def _stacked_adam(
    params: Sequence[torch.nn.Parameter], optimizers: Sequence[torch.optim.Optimizer], lr: float
) -> torch.optim.Adam:
    """One Adam over stacked tensors carrying the GANs' own Adam states (a resume)."""
    template = optimizers[0].param_groups[0]
    adam = torch.optim.Adam(params, lr, template["betas"], eps=template["eps"])
    states = [[o.state.get(p) for p in o.param_groups[0]["params"]] for o in optimizers]
    for i, param in enumerate(params):
        parts = [s[i] for s in states]
        if all(p is None for p in parts):
            continue
        if any(p is None for p in parts) or len({float(p["step"]) for p in parts}) > 1:
            raise ConfigError("batched GANs must resume from the same optimiser step")
        join = torch.stack if param.dim() == 0 else torch.cat
        adam.state[param] = {
            "step": parts[0]["step"].clone(),
            **{k: join([p[k] for p in parts]) for k in ("exp_avg", "exp_avg_sq")},
        }
    return adam


def _write_adam(
    adam: torch.optim.Adam, stack: StackedMCGAN, optimizer: torch.optim.Optimizer, g: int
) -> None:
    """GAN g's part of the stacked Adam state into its own optimiser (same parameter order)."""
    params = optimizer.param_groups[0]["params"]
    for name, param in zip(stack.param_names, params, strict=True):
        state = adam.state.get(stack.tensor(name))
        if state:
            optimizer.state[param] = {
                "step": state["step"].clone(),
                **{k: stack.part_of(state[k], name, g).clone() for k in ("exp_avg", "exp_avg_sq")},
            }


class GanGrid:
    def __init__(self, trainers: Sequence[GanTrainer]) -> None:
        check_compatible(trainers)
        self.trainers = list(trainers)
        first = self.trainers[0]
        self.config, self.device, self.precision = first.config, first.device, first.precision
        t = self.config.train
        layout = memory_format(t.channels_last)
        self.generator = StackedGenerator([x.generator_net for x in trainers]).to(
            memory_format=layout
        )
        self.discriminator = StackedDiscriminator([x.discriminator for x in trainers]).to(
            memory_format=layout
        )
        self._g = CompiledOrEager(self.generator, t.compile, "stacked generator")
        self._d = CompiledOrEager(self.discriminator, t.compile, "stacked discriminator")
        self.opt_g = _stacked_adam(
            list(self.generator.params.values()), [x.opt_g for x in trainers], t.lr_generator
        )
        self.opt_d = _stacked_adam(
            list(self.discriminator.params.values()),
            [x.opt_d for x in trainers],
            t.lr_discriminator,
        )
        self.real = torch.stack([x.real for x in trainers])  # [G, N, 1, H, W]
        self.labels = torch.stack([x.labels for x in trainers])  # [G, N]
        if t.compile != "none":
            self._probe_compiled()

    @property
    def epoch(self) -> int:
        return self.trainers[0].epoch

    @property
    def compile_fallback(self) -> str | None:
        """Why torch.compile fell back to eager, if it did."""
        return self._g.fallback_reason or self._d.fallback_reason

    def _probe_compiled(self) -> None:
        model = self.config.model
        probe_compiled(
            self._g,
            self._d,
            leading=(len(self.trainers), self.config.train.batch_size),
            latent_dim=model.latent_dim,
            image_size=model.image_size,
            precision=self.precision,
            device=self.device,
        )

    def _discriminate(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with autocast(self.precision, self.device):
            logits = self._d(images, labels)
        return logits.float() if self.precision == "bf16" else logits

    def epoch_draws(self) -> list[StepDraws]:
        """Each GAN's batches and draws from its own generator, stacked per step, on device."""
        per_gan = [x.host_draws() for x in self.trainers]
        return to_device([stack_draws(step) for step in zip(*per_gan, strict=True)], self.device)

    def _step(self, draws: StepDraws, generator_step: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """One D update (and a G update when due) of every GAN: losses [G] on the device."""
        t = self.config.train
        mark_step(t.compile)
        g, b = draws.indices.shape
        rows = torch.arange(g, device=self.device)[:, None]
        real = apply_augment(
            self.real[rows, draws.indices].flatten(0, 1),
            draws.augment.flatten(0, 1),
            t.flip_probability,
            (t.zoom_low, t.zoom_high),
        ).unflatten(0, (g, b))
        real_y = self.labels[rows, draws.indices]
        with autocast(self.precision, self.device):
            fake = self._g(draws.z, draws.fake_labels)
        self.opt_d.zero_grad(set_to_none=True)
        real_loss = bce(self._discriminate(real, real_y), draws.targets).mean(1)
        fake_loss = bce(self._discriminate(fake.detach(), draws.fake_labels), 0.0).mean(1)
        d_loss = real_loss + fake_loss
        d_loss.sum().backward()  # GAN g's parameters get exactly d(loss_g)
        self.opt_d.step()
        g_loss = torch.full_like(d_loss, float("nan"))
        if generator_step:
            self.opt_g.zero_grad(set_to_none=True)
            g_loss = bce(self._discriminate(fake, draws.fake_labels), 1.0).mean(1)
            g_loss.sum().backward()
            self.opt_g.step()
            self.discriminator.zero_grad(set_to_none=True)
        return d_loss.detach(), g_loss.detach()

    def train_epoch(self) -> list[dict[str, float]]:
        """One epoch of every GAN; each trainer's epoch, history and weights then updated."""
        self.generator.train()
        self.discriminator.train()
        every = self.config.train.discriminator_steps
        d_losses, g_losses = [], []
        for step, draws in enumerate(self.epoch_draws(), start=1):
            d, g = self._step(draws, step % every == 0)
            d_losses.append(d)
            if step % every == 0:
                g_losses.append(g)
        self.sync()
        d_all = torch.stack(d_losses).T.tolist()  # one host sync per epoch
        g_all = torch.stack(g_losses).T.tolist() if g_losses else [[] for _ in self.trainers]
        for trainer, d_list, g_list in zip(self.trainers, d_all, g_all, strict=True):
            trainer.check_epoch(d_list, g_list)  # every GAN checked before any epoch counts
        return [
            trainer.finish_epoch(d_list, g_list)
            for trainer, d_list, g_list in zip(self.trainers, d_all, g_all, strict=True)
        ]

    def sync(self) -> None:
        """Write the stack (weights, running statistics, Adam states) into the trainers."""
        modules = [x.generator_net for x in self.trainers]
        self.generator.write_to(modules)
        self.discriminator.write_to([x.discriminator for x in self.trainers])
        for g, trainer in enumerate(self.trainers):
            _write_adam(self.opt_g, self.generator, trainer.opt_g, g)
            _write_adam(self.opt_d, self.discriminator, trainer.opt_d, g)

    def fit(self, progress: bool = True) -> list[Path | None]:
        """`GanTrainer.fit` for every GAN at once: checkpoints every K epochs and at the end, in
        each GAN's out_dir; on SIGTERM each GAN's last finished epoch is saved."""
        total, every = self.config.train.epochs, self.config.train.checkpoint_every
        last: list[Path | None] = [None] * len(self.trainers)
        unsaved: list[dict[str, Any]] | None = None
        bar = tqdm(range(self.epoch + 1, total + 1), disable=not progress, desc="gan grid epochs")
        try:
            for epoch in bar:
                self.train_epoch()
                if epoch % every == 0 or epoch == total:
                    last = [x.save_checkpoint() for x in self.trainers]
                    unsaved = None
                else:
                    unsaved = [copy.deepcopy(x.state_dict()) for x in self.trainers]
        except (Terminated, KeyboardInterrupt):  # SIGTERM or Ctrl-C: keep the last epoch
            for trainer, state in zip(self.trainers, unsaved or [], strict=False):
                atomic_torch_save(trainer.checkpoint_path(state["epoch"]), state)
                log.info("stopped: saved %s epoch %d", trainer.out_dir, state["epoch"])
            for trainer in self.trainers:
                note_saved(trainer.out_dir / "checkpoints")
            raise
        return last
