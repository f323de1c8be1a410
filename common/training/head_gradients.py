"""Exact per-sample clipped gradients of a head of Linear layers, without materialising them.

For a Linear layer on one feature vector, the per-sample weight gradient is g a^T, so its norm
is ||g|| * ||a|| and the bias gradient's norm is ||g||; the clipped sum is (c * g)^T a. This is
per image because each row of the feature matrix is one image.

For a record of several rows (patient-level DP: all patches of a patient) the weight gradient
is sum_i g_i a_i^T, whose squared norm is sum_ij (g_i . g_j)(a_i . a_j) over the record's rows
(and ||sum_i g_i||^2 for a bias): exact from two [B, B] Gram matrices, still without
materialising a gradient per record.
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
    groups: torch.Tensor | None = None,
) -> tuple[dict[nn.Parameter, torch.Tensor], torch.Tensor, torch.Tensor]:
    """Sum over records of clipped per-record gradients of the trainable head parameters.

    `loss_fn(logits)` returns per-row losses; `clip(norms)` returns clip factors. `groups`
    (long [B], record position of each row): rows of one record are clipped together; None:
    each row is a record. Returns ({parameter: clipped sum}, per-record norms, per-row losses).
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
    pieces: list[tuple[nn.Parameter, torch.Tensor, torch.Tensor | None]] = []
    for layer, a, out in zip(linears, inputs, outputs, strict=True):
        g = out.grad
        assert g is not None
        if layer.weight.requires_grad:
            pieces.append((layer.weight, g, a))
        if layer.bias is not None and layer.bias.requires_grad:
            pieces.append((layer.bias, g, None))
    if groups is None:
        norms = _row_squared_norms(pieces, features).sqrt()
        factors = clip(norms)
    else:
        norms = _record_squared_norms(pieces, groups.to(features.device)).sqrt()
        factors = clip(norms)[groups.to(features.device)]
    sums = {}
    for parameter, g, a in pieces:
        weighted = g * factors[:, None]
        sums[parameter] = weighted.t() @ a if a is not None else weighted.sum(0)
    return sums, norms, losses.detach()


def _row_squared_norms(
    pieces: list[tuple[nn.Parameter, torch.Tensor, torch.Tensor | None]], features: torch.Tensor
) -> torch.Tensor:
    squared = torch.zeros(features.shape[0], dtype=features.dtype, device=features.device)
    for _, g, a in pieces:
        g_sq = g.pow(2).sum(1)
        squared += g_sq * a.pow(2).sum(1) if a is not None else g_sq
    return squared


def _record_squared_norms(
    pieces: list[tuple[nn.Parameter, torch.Tensor, torch.Tensor | None]], groups: torch.Tensor
) -> torch.Tensor:
    """||sum of the record's row gradients||^2 per record, from Gram matrices of its rows."""
    same = groups[:, None] == groups[None, :]
    pairs = torch.zeros(same.shape, dtype=pieces[0][1].dtype, device=groups.device)
    for _, g, a in pieces:
        gram = g @ g.t()
        pairs += gram * (a @ a.t()) if a is not None else gram
    per_row = (pairs * same).sum(1)
    records = int(groups.max()) + 1 if len(groups) else 0
    squared = torch.zeros(records, dtype=per_row.dtype, device=per_row.device)
    return squared.index_add_(0, groups, per_row).clamp(min=0.0)
