"""`cached` engine: frozen backbone features once (4 flip variants), then head-only steps.

Each step draws a Poisson sample (rate q) and one flip variant per record, as the naive engine
does with images (or, with augmentation multiplicity K, K distinct variants averaged per record
before clipping); per-sample clipping is exact (see head_gradients) and needs no per-sample
gradient tensors, so 300 epochs take seconds on a CPU. Features are the head's inputs: the
backbone's output after the model's fixed `feature_norm`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from common.data.images import LoadedPatches
from common.errors import ConfigError
from common.models.classifier import Classifier, prediction_variants, variant_mean_probability
from common.privacy.dp_sgd import (
    GaussianMechanism,
    RecordGroups,
    augment_records,
    clip_factors,
    draw_flips,
    expected_batch_size,
)
from common.privacy.randomness import private_generator
from common.training.engine import TrainableParameters
from common.training.features import cached_features
from common.training.head_gradients import clipped_gradient_sum
from common.training.settings import EngineSettings, make_optimizer


@dataclass(frozen=True)
class CachedFeatures:
    """The head's inputs (frozen-backbone features after `feature_norm`): train
    [variants, N, F] and each evaluation set's [V, N, F] (V = 4 with flip averaging, else 1)."""

    train: torch.Tensor
    evaluation: dict[str, torch.Tensor]


class CachedEngine(TrainableParameters):
    def __init__(
        self,
        model: Classifier,
        train: LoadedPatches,
        eval_sets: dict[str, LoadedPatches],
        settings: EngineSettings,
        features: CachedFeatures | None = None,
    ) -> None:
        """`features`: another engine's `features()` on the same backbone and sets (the grid
        engine shares one copy across cells); None: computed (or read from the cache)."""
        backbone_trainable = [n for n, p in model.backbone.named_parameters() if p.requires_grad]
        if backbone_trainable:
            raise ConfigError(
                "train.engine=cached needs a frozen backbone (model.trainable=head or head_last) "
                "or one whose last stage alone trains (model.trainable=last_stage, without DP); "
                f"{len(backbone_trainable)} backbone parameters train (e.g. "
                f"{backbone_trainable[0]}). Use train.engine=naive"
            )
        self.model = model
        self.settings = settings
        self.head = model.head.to(settings.device)
        variants = (0, 1, 2, 3) if settings.flips else (0,)
        extract = model.backbone.to(settings.device)
        normalise = model.feature_norm.to(settings.device)

        def compute(loaded: LoadedPatches, chosen: tuple[int, ...]) -> torch.Tensor:
            raw = cached_features(
                extract,
                loaded,
                chosen,
                settings.feature_batch_size,
                settings.device,
                settings.feature_cache_dir,
                settings.progress,
            ).to(settings.device)
            with torch.no_grad():
                return normalise(raw)

        if features is None:
            self.train_features = compute(train, variants)
            shown = prediction_variants(model)
            self.eval_features = {name: compute(s, shown) for name, s in eval_sets.items()}
        else:
            self.train_features, self.eval_features = features.train, dict(features.evaluation)
        self.train_labels = train.labels.to(settings.device)
        self.eval_labels = {name: s.labels.to(settings.device) for name, s in eval_sets.items()}
        self.parameters = [p for p in self.head.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(self.parameters, settings)
        self.generator = torch.Generator().manual_seed(settings.seed)  # flips, shuffling
        self.mechanism: GaussianMechanism | None = None
        if settings.dp is not None:
            seed = settings.noise_seed
            self.sampling = private_generator("cpu", seed, stream="poisson")
            self.records = RecordGroups.for_unit(settings.dp.unit, train.patch_set.patient_keys)
            self.mechanism = GaussianMechanism(
                noise_multiplier=settings.dp.noise_multiplier,
                max_grad_norm=settings.dp.max_grad_norm,
                expected_batch_size=settings.dp.expected_batch_size
                or expected_batch_size(self.records.records, settings.dp.sample_rate),
                generator=private_generator(settings.device, seed, stream="noise"),
            )
        self.steps_done = 0

    def centre_features(self, centre: torch.Tensor) -> None:
        """Subtract the model's feature centre [F] from every cached feature vector (train and
        evaluation), as the model's FeatureCentre does for a prediction from images."""
        centre = centre.to(self.train_features)
        self.train_features = self.train_features - centre
        self.eval_features = {name: f - centre for name, f in self.eval_features.items()}

    def features(self) -> CachedFeatures:
        return CachedFeatures(self.train_features, self.eval_features)

    @property
    def dataset_size(self) -> int:
        return int(self.train_labels.shape[0])

    def _draw_flips(self, indices: torch.Tensor) -> torch.Tensor:
        return draw_flips(indices, self.dataset_size, self.train_features.shape[0], self.generator)

    def batch(
        self, indices: torch.Tensor, flips: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        device = self.settings.device
        idx, fl = indices.to(device), flips.to(device)
        return self.train_features[fl, idx], self.train_labels[idx]

    def dp_clipped_sum(
        self,
        features: torch.Tensor,
        labels: torch.Tensor,
        groups: torch.Tensor | None = None,
        weights: torch.Tensor | None = None,
    ) -> tuple[dict[nn.Parameter, torch.Tensor], torch.Tensor, torch.Tensor]:
        """Clipped per-record gradient sums of the trainable head parameters (no noise);
        `groups` as in `clipped_gradient_sum` (patient-level DP, augmentation multiplicity);
        `weights` [rows]: each row's loss weight (1/K for K variants of a record)."""
        dp = self.settings.dp
        assert dp is not None

        def loss(logits: torch.Tensor) -> torch.Tensor:
            per_row = self.settings.per_sample_loss(logits, labels)
            return per_row * weights.to(per_row) if weights is not None else per_row

        return clipped_gradient_sum(
            self.head, features, loss, lambda norms: clip_factors(norms, dp.max_grad_norm), groups
        )

    def _dp_step(
        self, indices: torch.Tensor, flips: torch.Tensor, groups: torch.Tensor | None = None
    ) -> float:
        assert self.mechanism is not None
        weights = None
        multiplicity = self.settings.augmentation_multiplicity
        if multiplicity > 1 and len(indices):
            batch = augment_records(
                indices,
                groups,
                multiplicity,
                self.train_features.shape[0],
                self.generator,
                self.dataset_size,
            )
            indices, flips, groups, weights = batch.rows, batch.flips, batch.groups, batch.weights
        features, labels = self.batch(indices, flips)
        if len(indices):
            sums, _, losses = self.dp_clipped_sum(features, labels, groups, weights)
        else:  # an empty Poisson batch: a noise-only step
            sums, losses = {}, torch.zeros(0)
        summed = [sums.get(p, torch.zeros_like(p)) for p in self.parameters]
        for parameter, noisy in zip(self.parameters, self.mechanism.privatize(summed), strict=True):
            parameter.grad = noisy
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(losses.mean()) if losses.numel() else float("nan")

    def _plain_step(self, indices: torch.Tensor, flips: torch.Tensor) -> float:
        features, labels = self.batch(indices, flips)
        loss = self.settings.per_sample_loss(self.head(features), labels).mean()
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    def train_epoch(self) -> float:
        self.head.train()
        n, dp, losses = self.dataset_size, self.settings.dp, []
        if dp is not None:
            for _ in range(dp.steps_per_epoch):
                indices, groups = self.records.sample(dp.sample_rate, self.sampling)
                # with multiplicity > 1 `_dp_step` draws the variants itself
                flips = (
                    self._draw_flips(indices)
                    if self.settings.augmentation_multiplicity == 1
                    else torch.zeros(len(indices), dtype=torch.long)
                )
                losses.append(self._dp_step(indices, flips, groups))
                self.steps_done += 1
        else:
            order = torch.randperm(n, generator=self.generator)
            for chunk in order.split(self.settings.batch_size):
                losses.append(self._plain_step(chunk, self._draw_flips(chunk)))
                self.steps_done += 1
        # an epoch of empty Poisson batches only (noise-only steps) has no loss: NaN, no warning
        return float(np.nanmean(losses)) if losses and not np.isnan(losses).all() else float("nan")

    @torch.no_grad()
    def predict(self, name: str) -> tuple[np.ndarray, float]:
        self.head.eval()
        features, labels = self.eval_features[name], self.eval_labels[name]
        logits = self.head(features)  # [V, N, 2]
        loss = self.settings.per_sample_loss(logits.flatten(0, 1), labels.repeat(len(logits)))
        return variant_mean_probability(logits).cpu().numpy(), float(loss.mean())

    def model_state(self) -> dict[str, torch.Tensor]:
        return {f"head.{k}": v.detach().cpu().clone() for k, v in self.head.state_dict().items()}

    def close(self) -> None:
        """Free the cached features (the frozen backbone was never changed)."""
        self.train_features = torch.zeros(0)
        self.eval_features = {}
