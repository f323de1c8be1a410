"""Exact per-sample clipped gradients of a head of Linear layers, without materialising them.

For a Linear layer on one feature vector, the per-sample weight gradient is g a^T, so its norm
is ||g|| * ||a|| and the bias gradient's norm is ||g||; the clipped sum is (c * g)^T a. This is
per image because each row of the feature matrix is one image.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from common.errors import UnsupportedDPModelError

ELEMENTWISE = (nn.LeakyReLU, nn.ReLU, nn.GELU, nn.Tanh, nn.Identity, nn.Dropout)


def head_linears(head: nn.Module) -> list[nn.Linear]:
    """The Linear layers of a head made of Linear layers and elementwise activations."""
    modules = [head] if isinstance(head, nn.Linear) else list(head.children())
    for module in modules:
        if not isinstance(module, (nn.Linear, *ELEMENTWISE)):
            raise UnsupportedDPModelError(
                f"head layer {type(module).__name__} has no exact per-sample rule here; "
                "use a linear or mlp2 head"
            )
    return [m for m in modules if isinstance(m, nn.Linear)]


def clipped_gradient_sum(
    head: nn.Module,
    features: torch.Tensor,
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    clip: Callable[[torch.Tensor], torch.Tensor],
) -> tuple[dict[nn.Parameter, torch.Tensor], torch.Tensor, torch.Tensor]:
    """Sum over samples of clipped per-sample gradients of the trainable head parameters.

    `loss_fn(logits)` returns per-sample losses; `clip(norms)` returns clip factors.
    Returns ({parameter: clipped sum}, per-sample norms, per-sample losses).
    """
    linears = [m for m in head_linears(head) if any(p.requires_grad for p in m.parameters())]
    if not linears:
        raise UnsupportedDPModelError("the head has no trainable parameters")
    inputs: list[torch.Tensor] = []
    outputs: list[torch.Tensor] = []

    def capture(module: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        inputs.append(args[0].detach())
        out.retain_grad()
        outputs.append(out)

    handles = [m.register_forward_hook(capture) for m in linears]
    try:
        with torch.enable_grad():
            logits = head(features.detach().requires_grad_(False))
            losses = loss_fn(logits)
            # gradients w.r.t. layer outputs only: per-sample rows are independent
            torch.autograd.backward(losses.sum(), inputs=outputs)
    finally:
        for handle in handles:
            handle.remove()
    squared = torch.zeros(features.shape[0], dtype=features.dtype, device=features.device)
    pieces: list[tuple[nn.Parameter, torch.Tensor, torch.Tensor | None]] = []
    for layer, a, out in zip(linears, inputs, outputs, strict=True):
        g = out.grad
        assert g is not None
        g_sq = g.pow(2).sum(1)
        if layer.weight.requires_grad:
            squared += g_sq * a.pow(2).sum(1)
            pieces.append((layer.weight, g, a))
        if layer.bias is not None and layer.bias.requires_grad:
            squared += g_sq
            pieces.append((layer.bias, g, None))
    norms = squared.sqrt()
    factors = clip(norms)
    sums = {}
    for parameter, g, a in pieces:
        weighted = g * factors[:, None]
        sums[parameter] = weighted.t() @ a if a is not None else weighted.sum(0)
    return sums, norms, losses.detach()
