"""DP-SGD for the MCGAN discriminator.

Only the real batch touches private data: it is Poisson-sampled and its per-sample gradients
(opacus GradSampleModule, per image) are clipped and noised. The fake batch's gradient is a
function of the already-private discriminator and the generator (post-processing) and is added
unclipped. Gradient = (sum_i clip(g_real_i) + N(0, sigma^2 C^2)) / E[batch] + g_fake.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from common.privacy.dp_sgd import GaussianMechanism, check_per_record_rows, clipped_sum


class PrivateDiscriminatorStep:
    def __init__(
        self,
        discriminator: nn.Module,
        *,
        noise_multiplier: float,
        max_grad_norm: float,
        expected_batch_size: int,
        generator: torch.Generator,
    ) -> None:
        from opacus import GradSampleModule

        self.module: Any = GradSampleModule(discriminator, batch_first=True, loss_reduction="sum")
        self.max_grad_norm = max_grad_norm
        self.mechanism = GaussianMechanism(
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
            expected_batch_size=expected_batch_size,
            generator=generator,
        )
        self.parameters = [p for p in discriminator.parameters() if p.requires_grad]

    def _clear(self) -> None:
        for p in self.parameters:
            p.grad = None
            p.grad_sample = None

    def clipped_real_sum(
        self, real_loss: Callable[[nn.Module], torch.Tensor]
    ) -> list[torch.Tensor]:
        """Sum over the real batch of per-sample clipped gradients (one tensor per parameter)."""
        self._clear()
        losses = real_loss(self.module)
        if losses.numel() == 0:
            return [torch.zeros_like(p) for p in self.parameters]
        losses.sum().backward()
        samples = [p.grad_sample for p in self.parameters]
        check_per_record_rows(samples, losses.numel())
        sums = clipped_sum(samples, self.max_grad_norm)
        self._clear()
        return sums

    def fake_gradient(self, fake_loss: Callable[[nn.Module], torch.Tensor]) -> list[torch.Tensor]:
        """Ordinary (unclipped) gradient of the mean fake loss; hooks off."""
        self._clear()
        self.module.disable_hooks()
        try:
            fake_loss(self.module).mean().backward()
        finally:
            self.module.enable_hooks()
        grads = [
            p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
            for p in self.parameters
        ]
        self._clear()
        return grads

    def gradients(
        self,
        real_loss: Callable[[nn.Module], torch.Tensor],
        fake_loss: Callable[[nn.Module], torch.Tensor],
    ) -> list[torch.Tensor]:
        """The noisy DP gradient of one discriminator step (before the optimiser)."""
        real = self.mechanism.privatize(self.clipped_real_sum(real_loss))
        fake = self.fake_gradient(fake_loss)
        return [r + f for r, f in zip(real, fake, strict=True)]

    def without_hooks(self) -> Any:
        """Context for generator steps: no per-sample capture through the discriminator."""
        module = self.module

        class _NoHooks:
            def __enter__(self) -> None:
                module.disable_hooks()

            def __exit__(self, *exc: object) -> None:
                module.enable_hooks()

        return _NoHooks()
