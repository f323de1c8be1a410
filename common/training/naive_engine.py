"""`naive` engine: the paper's loop, a full forward pass every step.

Under DP, opacus' `GradSampleModule` (hooks) gives per-sample gradients and the DP-SGD core
(`common.privacy.dp_sgd`) samples, clips and noises them: Poisson batches at q = 1/ceil(N/B),
exactly ceil(N/B) steps per epoch (opacus' own default, int(1/q), is one short for some N), and
an empty batch still takes a noise-only step. `close()` removes the hooks, so one model can get
a new engine every federated round.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from common.data.images import LoadedPatches, apply_flips, to_model_input
from common.errors import ConfigError, UnsupportedDPModelError
from common.models.classifier import Classifier, prediction_variants, variant_mean_probability
from common.models.policies import WINDOW_ATTENTION_TYPES, backbone_has_batchnorm
from common.privacy.dp_sgd import (
    GaussianMechanism,
    RecordGroups,
    augment_records,
    check_per_record_rows,
    clipped_sum,
    draw_flips,
    expected_batch_size,
)
from common.privacy.randomness import private_generator, private_stochastic_layers
from common.training.engine import TrainableParameters
from common.training.settings import EngineSettings, make_optimizer


def check_per_image_gradients(model: Classifier) -> None:
    """Refuse DP on parameters whose per-sample gradients would not be per image.

    Swin's window attention folds windows into the batch dimension, so hooks there would clip
    per window; train-mode BatchNorm mixes the images of a batch.
    """
    for name, module in model.backbone.named_modules():
        trainable = any(p.requires_grad for p in module.parameters(recurse=True))
        if not trainable:
            continue
        if type(module).__name__ in WINDOW_ATTENTION_TYPES:
            raise UnsupportedDPModelError(
                f"backbone.{name} ({type(module).__name__}) would get per-window, not per-image, "
                "gradients under DP; freeze the backbone (model.trainable=head|head_last)"
            )
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            raise UnsupportedDPModelError(
                f"backbone.{name} is BatchNorm: it mixes images and has no per-sample gradient; "
                "freeze it (model.trainable=head|head_last) or use a backbone without BatchNorm"
            )


class NaiveEngine(TrainableParameters):
    def __init__(
        self,
        model: Classifier,
        train: LoadedPatches,
        eval_sets: dict[str, LoadedPatches],
        settings: EngineSettings,
    ) -> None:
        if settings.dp and settings.backbone_train_mode and backbone_has_batchnorm(model.backbone):
            raise ConfigError(
                "train.backbone_mode=train with a BatchNorm backbone under DP would learn "
                "statistics from private images and mix images of a batch; use "
                "train.backbone_mode=auto"
            )
        self.settings = settings
        self.model = model.to(settings.device)
        self.pixels = torch.as_tensor(train.pixels)
        self.patients = train.patch_set.patient_keys  # identity: (site, patient)
        self.labels = train.labels
        self.eval_sets = eval_sets
        self.generator = torch.Generator().manual_seed(settings.seed)
        self.parameters = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(self.parameters, settings)
        self.module: nn.Module = self.model
        self.mechanism: GaussianMechanism | None = None
        if settings.dp is not None:
            self._make_private()
        self.steps_done = 0

    def _make_private(self) -> None:
        from opacus import GradSampleModule

        dp = self.settings.dp
        assert dp is not None
        check_per_image_gradients(self.model)
        self.model.train()
        # our own guards stand in for opacus' strict validation (frozen BatchNorm is fine)
        self.module = GradSampleModule(
            self.model, batch_first=True, loss_reduction="sum", strict=False
        )
        seed = self.settings.noise_seed
        self.sampling = private_generator("cpu", seed, stream="poisson")
        # masks of the backbone's stochastic depth (train mode), see private_stochastic_layers
        self.layer_rng = private_generator("cpu", seed, stream="stochastic-depth")
        self.records = RecordGroups.for_unit(dp.unit, self.patients)
        self.mechanism = GaussianMechanism(
            noise_multiplier=dp.noise_multiplier,
            max_grad_norm=dp.max_grad_norm,
            expected_batch_size=dp.expected_batch_size
            or expected_batch_size(self.records.records, dp.sample_rate),
            generator=private_generator(self.settings.device, seed, stream="noise"),
        )

    def _set_train_mode(self) -> None:
        self.module.train()
        self.model.backbone.train(self.settings.backbone_train_mode)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def batch(
        self, indices: torch.Tensor, flips: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        images = apply_flips(to_model_input(self.pixels[indices]), flips)
        device = self.settings.device
        return images.to(device, self.dtype), self.labels[indices].to(device)

    def _grad_samples(
        self, indices: torch.Tensor, flips: torch.Tensor, weights: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """Per-sample gradients (opacus hooks, sum reduction) of the trainable parameters;
        `weights` [rows]: each row's loss weight (1/K for K variants of one record)."""
        self._set_train_mode()
        images, labels = self.batch(indices, flips)
        if self.mechanism is not None:
            with private_stochastic_layers(self.layer_rng, self.settings.device):
                logits = self.module(images)
        else:
            logits = self.module(images)
        losses = self.settings.per_sample_loss(logits, labels)
        weighted = losses * weights.to(losses) if weights is not None else losses
        weighted.sum().backward()
        self.last_loss = float(losses.detach().mean())
        samples = [p.grad_sample.detach() for p in self.parameters]
        check_per_record_rows(samples, len(indices))
        self._clear_gradients()
        return samples

    def _clear_gradients(self) -> None:
        for p in self.parameters:
            p.grad = None
            p.grad_sample = None

    def per_sample_gradients(
        self, indices: torch.Tensor, flips: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """opacus' per-sample gradients for one batch, by parameter name."""
        names = {id(p): n for n, p in self.model.named_parameters()}
        samples = self._grad_samples(indices, flips)
        return {names[id(p)]: g for p, g in zip(self.parameters, samples, strict=True)}

    def dp_clipped_sum(
        self,
        indices: torch.Tensor,
        flips: torch.Tensor,
        groups: torch.Tensor | None = None,
        weights: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """The clipped per-record gradient sum for one batch (no noise, no update); `groups`
        as in `clipped_sum` (patient-level DP, augmentation multiplicity), `weights` as in
        `_grad_samples`."""
        dp = self.settings.dp
        assert dp is not None
        names = {id(p): n for n, p in self.model.named_parameters()}
        samples = self._grad_samples(indices, flips, weights)
        sums = clipped_sum(samples, dp.max_grad_norm, groups)
        return {names[id(p)]: s for p, s in zip(self.parameters, sums, strict=True)}

    def _draw_flips(self, indices: torch.Tensor) -> torch.Tensor:
        if not self.settings.flips:
            return torch.zeros(len(indices), dtype=torch.long)
        return draw_flips(indices, len(self.labels), 4, self.generator)

    def _dp_step(self, indices: torch.Tensor, groups: torch.Tensor | None = None) -> float | None:
        dp, mechanism = self.settings.dp, self.mechanism
        assert dp is not None and mechanism is not None
        loss = None
        if len(indices) == 0:  # an empty Poisson batch: a noise-only step
            sums = [torch.zeros_like(p) for p in self.parameters]
        elif self.settings.augmentation_multiplicity > 1:
            batch = augment_records(
                indices,
                groups,
                self.settings.augmentation_multiplicity,
                4,
                self.generator,
                len(self.labels),
            )
            samples = self._grad_samples(batch.rows, batch.flips, batch.weights)
            sums = clipped_sum(samples, dp.max_grad_norm, batch.groups)
            loss = self.last_loss
        else:
            samples = self._grad_samples(indices, self._draw_flips(indices))
            sums = clipped_sum(samples, dp.max_grad_norm, groups)
            loss = self.last_loss
        for parameter, gradient in zip(self.parameters, mechanism.privatize(sums), strict=True):
            parameter.grad = gradient.to(parameter.dtype)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss

    def _plain_step(self, indices: torch.Tensor) -> float:
        self._set_train_mode()
        images, labels = self.batch(indices, self._draw_flips(indices))
        loss = self.settings.per_sample_loss(self.module(images), labels).mean()
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        dp = self.settings.dp
        if dp is not None:
            for _ in range(dp.steps_per_epoch):
                yield self.records.sample(dp.sample_rate, self.sampling)
        else:
            order = torch.randperm(len(self.labels), generator=self.generator)
            for chunk in order.split(self.settings.batch_size):
                yield chunk, None

    def train_epoch(self) -> float:
        losses: list[float] = []
        for indices, groups in self._batches():
            self.steps_done += 1
            loss = self._dp_step(indices, groups) if self.settings.dp else self._plain_step(indices)
            if loss is not None:
                losses.append(loss)
        return float(np.mean(losses)) if losses else float("nan")

    @torch.no_grad()
    def predict(self, name: str) -> tuple[np.ndarray, float]:
        self.model.eval()
        loaded = self.eval_sets[name]
        probabilities, losses = [], []
        size = self.settings.feature_batch_size
        variants = torch.tensor(prediction_variants(self.model))
        for start in range(0, len(loaded.pixels), size):
            images = to_model_input(loaded.pixels[start : start + size])
            labels = loaded.labels[start : start + size].to(self.settings.device)
            logits = torch.stack(
                [
                    self.model(
                        apply_flips(images, variant.expand(len(images))).to(
                            self.settings.device, self.dtype
                        )
                    )
                    for variant in variants
                ]
            )
            probabilities.append(variant_mean_probability(logits).cpu())
            losses.append(
                self.settings.per_sample_loss(logits.flatten(0, 1), labels.repeat(len(logits)))
                .cpu()
                .reshape(len(logits), -1)
                .mean(0)
            )
        return torch.cat(probabilities).numpy(), float(torch.cat(losses).mean())

    def model_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}

    def close(self) -> None:
        module: Any = self.module
        if module is not self.model:
            module.remove_hooks()
            self._clear_gradients()
        self.module = self.model
