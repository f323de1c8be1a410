"""`cached` engine with `model.trainable=last_stage`: the trunk's feature maps once per image and
flip (cached like the head's features), then the last stage and the head train on them.

The CPU variant of the paper's SynPre (docs/results.md): the same loop as the naive engine
(shuffled batches of batch_size, one flip per image drawn as the naive engine draws it, the
same per-sample loss and optimiser) on the trunk's output instead of the image. The backbone
stays in eval mode (frozen BatchNorm statistics, no stochastic depth, whatever
train.backbone_mode says), as the naive engine keeps a BatchNorm backbone by default; there, a
seeded run follows the naive engine with the same policy step for step up to float rounding
(tests/unit/training; trunk maps of 256 images or more come from a frozen graph, equal to eager
within 1e-4 relative). No DP: this engine has no per-sample clipping (DP runs train the head).
"""

from __future__ import annotations

import numpy as np
import torch

from common.data.images import LoadedPatches, to_model_input
from common.errors import ConfigError
from common.models.backbone_split import check_split, split_backbone
from common.models.classifier import Classifier, prediction_variants, variant_mean_probability
from common.privacy.dp_sgd import draw_flips
from common.training.engine import TrainableParameters
from common.training.features import cached_features
from common.training.settings import EngineSettings, make_optimizer


def _dtype(model: torch.nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype


class TailEngine(TrainableParameters):
    def __init__(
        self,
        model: Classifier,
        train: LoadedPatches,
        eval_sets: dict[str, LoadedPatches],
        settings: EngineSettings,
    ) -> None:
        split = split_backbone(model.backbone)
        tail = tuple(f"backbone.{m}." for m in split.tail_modules)
        outside = [
            n
            for n, p in model.named_parameters()
            if p.requires_grad and not n.startswith(("head.", *tail))
        ]
        if outside:
            raise ConfigError(
                f"train.engine=cached trains the head, or the last stage and the head "
                f"(model.trainable=last_stage); {len(outside)} other parameters train (e.g. "
                f"{outside[0]}). Use train.engine=naive"
            )
        if settings.dp is not None:
            raise ConfigError(
                "model.trainable=last_stage with train.engine=cached trains without DP (SynPre's "
                "CPU variant): this engine has no per-sample clipping. Use model.trainable=head "
                "for DP"
            )
        model.backbone.to(settings.device)
        probe = to_model_input(train.pixels[:2]).to(settings.device, _dtype(model))
        check_split(model.backbone, split, probe)
        self.model = model.to(settings.device)
        self.settings = settings
        self.mechanism = None
        self.tail = split.tail
        self.channels_first = split.channels_first
        variants = (0, 1, 2, 3) if settings.flips else (0,)

        def maps(loaded: LoadedPatches, chosen: tuple[int, ...]) -> torch.Tensor:
            return cached_features(
                split.trunk,
                loaded,
                chosen,
                settings.feature_batch_size,
                settings.device,
                settings.feature_cache_dir,
                settings.progress,
                kind="trunk:" + ",".join(split.tail_modules),
            )

        self.train_maps = maps(train, variants)  # [V, N, ...] on CPU; batches move
        shown = prediction_variants(model)
        self.eval_maps = {name: maps(s, shown) for name, s in eval_sets.items()}
        self.train_labels = train.labels
        self.eval_labels = {name: s.labels for name, s in eval_sets.items()}
        self.parameters = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(self.parameters, settings)
        self.generator = torch.Generator().manual_seed(settings.seed)  # shuffling, flips
        self.steps_done = 0

    def _logits(self, maps: torch.Tensor) -> torch.Tensor:
        maps = maps.to(self.settings.device, non_blocking=True)
        if self.channels_first:  # strides only (same values): about 1.2x faster convs on CPU
            maps = maps.contiguous(memory_format=torch.channels_last)
        return self.model.head_logits(self.tail(maps))

    def _set_train_mode(self) -> None:
        self.model.train()
        self.model.backbone.eval()  # frozen statistics, as the naive engine's BatchNorm backbone

    def train_epoch(self) -> float:
        self._set_train_mode()
        n = len(self.train_labels)
        losses = []
        for chunk in torch.randperm(n, generator=self.generator).split(self.settings.batch_size):
            flips = (
                draw_flips(chunk, n, self.train_maps.shape[0], self.generator)
                if self.settings.flips
                else torch.zeros(len(chunk), dtype=torch.long)
            )
            labels = self.train_labels[chunk].to(self.settings.device)
            loss = self.settings.per_sample_loss(
                self._logits(self.train_maps[flips, chunk]), labels
            ).mean()
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            self.steps_done += 1
        return float(np.mean(losses)) if losses else float("nan")

    @torch.no_grad()
    def predict(self, name: str) -> tuple[np.ndarray, float]:
        """(malignancy probabilities [N], mean loss) on the evaluation set `name`, in eval mode,
        averaged over the prediction variants (flip averaging)."""
        self.model.eval()
        maps, labels = self.eval_maps[name], self.eval_labels[name].to(self.settings.device)
        size = self.settings.feature_batch_size
        logits = torch.cat(
            [
                torch.stack([self._logits(m[start : start + size]) for m in maps])
                for start in range(0, maps.shape[1], size)
            ],
            dim=1,
        )  # [V, N, 2]
        loss = self.settings.per_sample_loss(logits.flatten(0, 1), labels.repeat(len(logits)))
        return variant_mean_probability(logits).cpu().numpy(), float(loss.mean())

    def model_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}

    def close(self) -> None:
        """Free the cached maps (the trunk was never changed)."""
        self.train_maps = torch.zeros(0)
        self.eval_maps = {}
