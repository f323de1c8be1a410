"""`naive` engine: the paper's loop, a full forward pass every step, opacus under DP.

DP uses opacus' `PrivacyEngine.make_private` (GradSampleModule hooks, DPOptimizer, accountant)
with opacus' Poisson sampler at q = 1/ceil(N/B) for exactly ceil(N/B) steps per epoch (opacus'
own default, int(1/q), is one short for some N). An empty Poisson batch still takes a noise-only
step, as the mechanism requires.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from common.data.images import LoadedPatches, apply_flips, to_model_input
from common.errors import ConfigError, UnsupportedDPModelError
from common.models.classifier import Classifier
from common.models.policies import backbone_has_batchnorm
from common.training.settings import EngineSettings

WINDOW_ATTENTION_TYPES = ("WindowAttention", "ShiftedWindowAttention", "ShiftedWindowAttentionV2")


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


class NaiveEngine:
    def __init__(
        self,
        model: Classifier,
        train: LoadedPatches,
        eval_sets: dict[str, LoadedPatches],
        settings: EngineSettings,
    ) -> None:
        if settings.backbone_train_mode and backbone_has_batchnorm(model.backbone):
            raise ConfigError(
                "train.backbone_mode=train with a BatchNorm backbone would learn statistics from "
                "private images and mix images of a batch; use train.backbone_mode=auto"
            )
        self.settings = settings
        self.model = model.to(settings.device)
        self.pixels = torch.as_tensor(train.pixels)
        self.labels = train.labels
        self.eval_sets = eval_sets
        self.generator = torch.Generator().manual_seed(settings.seed)
        parameters = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            parameters, lr=settings.lr, weight_decay=settings.weight_decay
        )
        self.module: nn.Module = self.model
        self.privacy_engine: Any = None
        if settings.dp is not None:
            self._make_private()
        self.steps_done = 0

    def _make_private(self) -> None:
        from opacus import PrivacyEngine
        from opacus.utils.uniform_sampler import UniformWithReplacementSampler

        dp = self.settings.dp
        assert dp is not None
        check_per_image_gradients(self.model)
        self.sampler = UniformWithReplacementSampler(
            num_samples=len(self.labels),
            sample_rate=dp.sample_rate,
            generator=self.generator,
            steps=dp.steps_per_epoch,
        )
        index_loader = DataLoader(
            TensorDataset(torch.arange(len(self.labels))), batch_sampler=self.sampler
        )
        self.model.train()
        privacy_engine = PrivacyEngine(accountant="rdp")
        self.privacy_engine = privacy_engine
        self.module, self.optimizer, _ = privacy_engine.make_private(
            module=self.model,
            optimizer=self.optimizer,
            data_loader=index_loader,
            noise_multiplier=dp.noise_multiplier,
            max_grad_norm=dp.max_grad_norm,
            poisson_sampling=False,  # our loader already is opacus' Poisson sampler
            grad_sample_mode="hooks",
        )
        self.optimizer.generator = torch.Generator(self.settings.device).manual_seed(
            self.settings.seed + 1
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

    def dp_clipped_sum(self, indices: torch.Tensor, flips: torch.Tensor) -> dict[str, torch.Tensor]:
        """opacus' clipped per-sample gradient sum for one batch (no noise, no update)."""
        self._set_train_mode()
        images, labels = self.batch(indices, flips)
        self.settings.per_sample_loss(self.module(images), labels).mean().backward()
        self.optimizer.clip_and_accumulate()
        names = {id(p): n for n, p in self.model.named_parameters()}
        sums = {names[id(p)]: p.summed_grad.detach().clone() for p in self.optimizer.params}
        self.optimizer.zero_grad(set_to_none=True)
        return sums

    def per_sample_gradients(
        self, indices: torch.Tensor, flips: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """opacus' per-sample gradients (GradSampleModule hooks) for one batch."""
        self._set_train_mode()
        images, labels = self.batch(indices, flips)
        self.settings.per_sample_loss(self.module(images), labels).mean().backward()
        names = {id(p): n for n, p in self.model.named_parameters()}
        grads = {names[id(p)]: p.grad_sample.detach().clone() for p in self.optimizer.params}
        self.optimizer.zero_grad(set_to_none=True)
        return grads

    def _batches(self) -> Iterator[torch.Tensor]:
        if self.settings.dp is not None:
            for indices in self.sampler:
                yield torch.as_tensor(indices, dtype=torch.long)
        else:
            order = torch.randperm(len(self.labels), generator=self.generator)
            yield from order.split(self.settings.batch_size)

    def _draw_flips(self, count: int) -> torch.Tensor:
        if not self.settings.flips:
            return torch.zeros(count, dtype=torch.long)
        return torch.randint(0, 4, (count,), generator=self.generator)

    def check_grad_samples_per_image(self, batch: int) -> None:
        """Every per-sample gradient must have one row per image: a backbone that folds windows
        or patches into the batch dimension would otherwise be clipped per window, silently."""
        for parameter in self.optimizer.params:
            rows = parameter.grad_sample.shape[0]
            if rows != batch:
                raise UnsupportedDPModelError(
                    f"per-sample gradients with {rows} rows for a batch of {batch} images: a "
                    "trainable layer sees windows or tokens as samples; freeze it "
                    "(model.trainable=head|head_last)"
                )

    def _empty_dp_step(self) -> None:
        for parameter in self.optimizer.params:
            parameter.grad_sample = torch.zeros((0, *parameter.shape), device=parameter.device)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def train_epoch(self) -> float:
        self._set_train_mode()
        losses: list[float] = []
        for indices in self._batches():
            self.steps_done += 1
            if len(indices) == 0:
                self._empty_dp_step()
                continue
            images, labels = self.batch(indices, self._draw_flips(len(indices)))
            loss = self.settings.per_sample_loss(self.module(images), labels).mean()
            loss.backward()
            if self.settings.dp is not None:
                self.check_grad_samples_per_image(len(indices))
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
        return float(np.mean(losses)) if losses else float("nan")

    @torch.no_grad()
    def predict(self, name: str) -> tuple[np.ndarray, float]:
        self.module.eval()
        loaded = self.eval_sets[name]
        probabilities, losses = [], []
        size = self.settings.feature_batch_size
        for start in range(0, len(loaded.pixels), size):
            images = to_model_input(loaded.pixels[start : start + size]).to(
                self.settings.device, self.dtype
            )
            labels = loaded.labels[start : start + size].to(self.settings.device)
            logits = self.module(images)
            probabilities.append(torch.softmax(logits, 1)[:, 1].cpu())
            losses.append(self.settings.per_sample_loss(logits, labels).cpu())
        return torch.cat(probabilities).numpy(), float(torch.cat(losses).mean())

    def model_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}

    def accountant_steps(self) -> int | None:
        """Steps opacus' own accountant recorded (a cross-check of the mammofl ledger)."""
        if self.privacy_engine is None:
            return None
        return sum(steps for _, _, steps in self.privacy_engine.accountant.history)
