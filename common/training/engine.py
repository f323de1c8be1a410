"""The engine protocol: what `fit`, the single-node mode and a federated site call.

An engine trains the *trainable* parameters of a classifier (its policy decides which) and can
be created, used for one federated round and closed, then created again on the same model.
`trainable_state()` has the same keys for every engine: the names of the trainable parameters
in `model.named_parameters()` (e.g. `head.0.weight`), and nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from common.errors import ConfigError


class TrainingEngine(Protocol):
    steps_done: int
    optimizer: torch.optim.Optimizer

    def train_epoch(self) -> float:
        """One epoch; returns the mean training loss (not recorded under DP)."""

    def predict(self, name: str) -> tuple[np.ndarray, float]:
        """(malignancy probabilities, mean loss) on the evaluation set `name`."""

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The trainable parameters only, on CPU."""

    def load_trainable(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load exactly the trainable parameters (same keys and shapes), e.g. global weights."""

    def model_state(self) -> dict[str, torch.Tensor]:
        """Everything the engine changes, for selection snapshots."""

    def mechanism_steps(self) -> int | None:
        """Noisy steps the Gaussian mechanism took (None without DP)."""

    def close(self) -> None:
        """Release hooks and caches; the model can get a new engine afterwards."""


class TrainableParameters:
    """The engine protocol's model-facing part, shared by both engines (needs `self.model` and
    `self.mechanism`)."""

    model: nn.Module
    mechanism: Any

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return trainable_state(self.model)

    def load_trainable(self, state: Mapping[str, torch.Tensor]) -> None:
        load_trainable(self.model, state)

    def mechanism_steps(self) -> int | None:
        return self.mechanism.invocations if self.mechanism is not None else None


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {
        name: p.detach().cpu().clone() for name, p in model.named_parameters() if p.requires_grad
    }


def load_trainable(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Copy `state` into the trainable parameters; keys and shapes must match exactly."""
    parameters = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if set(state) != set(parameters):
        missing = sorted(set(parameters) - set(state))[:3]
        extra = sorted(set(state) - set(parameters))[:3]
        raise ConfigError(
            f"trainable state does not match the model's trainable parameters "
            f"(missing {missing}, unexpected {extra}): same model.* and model.trainable needed"
        )
    with torch.no_grad():
        for name, parameter in parameters.items():
            value = torch.as_tensor(state[name])
            if value.shape != parameter.shape:
                raise ConfigError(f"{name}: shape {tuple(value.shape)} != {tuple(parameter.shape)}")
            parameter.copy_(value.to(parameter.device, parameter.dtype))


def state_fingerprint(state: Mapping[str, torch.Tensor | np.ndarray]) -> str:
    """SHA-256 over names, dtypes, shapes and values: the same model weights on server and site."""
    import hashlib

    digest = hashlib.sha256()
    for name in sorted(state):
        array = np.ascontiguousarray(torch.as_tensor(state[name]).detach().cpu().numpy())
        digest.update(f"{name}:{array.dtype}:{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()
