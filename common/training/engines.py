"""Which engine trains a model: `train.engine` and the model's trainable parameters decide."""

from __future__ import annotations

from common.data.images import LoadedPatches
from common.errors import ConfigError
from common.models.backbone_split import split_backbone
from common.models.classifier import Classifier
from common.training.cached_engine import CachedEngine
from common.training.engine import TrainingEngine
from common.training.naive_engine import NaiveEngine
from common.training.settings import EngineSettings
from common.training.tail_engine import TailEngine


def trains_only_the_tail(model: Classifier) -> bool:
    """Whether the backbone's trainable parameters exist and all sit in its last stage (the
    `last_stage` policy), so the trunk can be cached."""
    trainable = [n for n, p in model.backbone.named_parameters() if p.requires_grad]
    if not trainable:
        return False
    try:
        tail = tuple(f"{m}." for m in split_backbone(model.backbone).tail_modules)
    except ConfigError:  # an architecture that cannot be cut: CachedEngine refuses it
        return False
    return all(n.startswith(tail) for n in trainable)


def make_engine(
    name: str,
    model: Classifier,
    train: LoadedPatches,
    eval_sets: dict[str, LoadedPatches],
    settings: EngineSettings,
) -> TrainingEngine:
    """`naive`: full forward passes; `cached`: frozen features once, then the head
    (`CachedEngine`, which refuses a trainable backbone), or the trunk's maps once, then the
    last stage and the head (`TailEngine`: model.trainable=last_stage)."""
    if name != "cached":
        return NaiveEngine(model, train, eval_sets, settings)
    if trains_only_the_tail(model):
        return TailEngine(model, train, eval_sets, settings)
    return CachedEngine(model, train, eval_sets, settings)
