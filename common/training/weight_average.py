"""Exponential moving average of the iterates (Polyak-Ruppert style weight averaging).

Under DP the iterates are post-processing of the noisy gradients, so averaging them costs no
privacy; it averages away part of the noise the last iterate carries (De et al. 2022, sec. 3.3,
EMA of DP-SGD iterates). The decay warms up as min(decay, (1 + t) / (10 + t)) after t updates
(TensorFlow's `ExponentialMovingAverage` with `num_updates`), so early averages are not
dominated by the initial weights.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn


class WeightAverage:
    """EMA copies of `parameters`, updated after every optimiser step (a step post-hook)."""

    def __init__(
        self, parameters: Sequence[nn.Parameter], decay: float, optimizer: torch.optim.Optimizer
    ) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"EMA decay {decay} must be in (0, 1)")
        self.parameters = list(parameters)
        self.decay = decay
        self.updates = 0
        self.averages = [p.detach().clone() for p in self.parameters]
        self._handle = optimizer.register_step_post_hook(lambda *_: self.update())

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for average, parameter in zip(self.averages, self.parameters, strict=True):
            average.lerp_(parameter.detach(), 1.0 - decay)

    @contextmanager
    def applied(self) -> Iterator[None]:
        """The averages in the parameters for the block (evaluation, snapshots), then back."""
        current = [p.detach().clone() for p in self.parameters]
        self.copy_to_parameters()
        try:
            yield
        finally:
            with torch.no_grad():
                for parameter, value in zip(self.parameters, current, strict=True):
                    parameter.copy_(value)

    @torch.no_grad()
    def copy_to_parameters(self) -> None:
        for parameter, average in zip(self.parameters, self.averages, strict=True):
            parameter.copy_(average)

    def remove(self) -> None:
        self._handle.remove()
