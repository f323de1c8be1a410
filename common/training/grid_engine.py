"""Several cached-engine cells trained as one vectorised program (same features, same head).

A Table 1 grid trains one small head per (row, seed) on the same frozen features: thousands of
tiny steps, each dominated by Python and kernel-launch overhead. The grid engine stacks the
heads of C cells ([C, ...] parameters) and takes every cell's step in one batched forward and
backward. What makes each cell a cell is kept per cell, in the cell's own `CachedEngine`:
its Poisson sampling stream, flip stream and noise stream (drawn in the same order as the
per-cell engine draws them, so seeded runs match step for step), its Gaussian mechanism (its
own sigma) and step count. Per-record clipping is the same exact ||g||·||a|| rule as
`head_gradients` (padding rows weigh 0). AdamW is elementwise, so one AdamW over the stacked
parameters is C independent AdamWs.

Limits (refused with ConfigError, the cells then run one by one): patient-level DP (records
of several rows), heads other than Linear / Linear-activation-Linear, recipe knobs other than
the paper's (SGD, augmentation multiplicity, weight averaging), cells that differ in anything
but seed, noise multiplier and target (sample rate, steps, batch, lr, ...).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from common.errors import ConfigError
from common.privacy.dp_sgd import clip_factors
from common.training.cached_engine import CachedEngine
from common.training.head_gradients import head_linears


class GridCachedEngine:
    """C `CachedEngine`s (sharing train features) stepped together; their heads are kept in
    sync with the stacked parameters after every epoch, so each engine's `predict` and
    `model_state` work as for a single cell."""

    def __init__(self, engines: Sequence[CachedEngine]) -> None:
        if not engines:
            raise ConfigError("a grid needs at least one cell")
        self.engines = list(engines)
        first = self.engines[0]
        _check_compatible(self.engines)
        self.layers = _layer_plan(first.head)
        names = [name for name, _ in first.head.named_parameters()]
        self.stacked = [
            nn.Parameter(
                torch.stack([dict(e.head.named_parameters())[n].detach() for e in engines])
            )
            for n in names
        ]
        settings = first.settings
        # fused: one kernel per stacked tensor (the same elementwise AdamW, float rounding aside)
        self.optimizer = torch.optim.AdamW(
            self.stacked, lr=settings.lr, weight_decay=settings.weight_decay, fused=True
        )

    @property
    def cells(self) -> int:
        return len(self.engines)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits [C, B, 2] of features [C, B, F] (or [B, F], shared), and each Linear's input
        and output (for the per-record rule)."""
        x = features if features.dim() == 3 else features.expand(self.cells, -1, -1)
        taps: list[torch.Tensor] = []
        k = 0
        for layer in self.layers:
            if layer is None:  # a Linear: its weight and bias are the next two stacked tensors
                weight, bias = self.stacked[k], self.stacked[k + 1]
                k += 2
                taps.append(x)
                x = torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))
                taps.append(x)
            else:
                x = layer(x)
        return x, taps

    def train_epoch(self) -> list[float]:
        """One epoch of every cell; returns each cell's mean training loss (NaN for an epoch
        of empty Poisson batches)."""
        first = self.engines[0]
        dp = first.settings.dp
        losses: list[list[float]] = [[] for _ in self.engines]
        if dp is not None:
            for _ in range(dp.steps_per_epoch):
                batches = []
                for engine in self.engines:
                    indices, groups = engine.records.sample(dp.sample_rate, engine.sampling)
                    if groups is not None:
                        raise ConfigError("the grid engine takes per-patch DP only")
                    batches.append((indices, engine._draw_flips(indices)))
                for cell, loss in enumerate(self._dp_step(batches)):
                    losses[cell].append(loss)
        else:
            orders = [
                torch.randperm(first.dataset_size, generator=e.generator) for e in self.engines
            ]
            for chunks in zip(*(o.split(first.settings.batch_size) for o in orders), strict=True):
                batches = [(c, e._draw_flips(c)) for c, e in zip(chunks, self.engines, strict=True)]
                for cell, loss in enumerate(self._plain_step(batches)):
                    losses[cell].append(loss)
        for engine in self.engines:
            engine.steps_done += len(losses[0])
        self._write_back()
        return [
            float(np.nanmean(c)) if c and not np.isnan(c).all() else float("nan") for c in losses
        ]

    def _gather(
        self, batches: Sequence[tuple[torch.Tensor, torch.Tensor]]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Features [C, B, F], labels [C, B] and a 0/1 row mask [C, B], padded to the largest B."""
        first = self.engines[0]
        width = max((len(i) for i, _ in batches), default=0)
        device = first.settings.device
        features = torch.zeros(
            (self.cells, width, first.train_features.shape[-1]),
            dtype=first.train_features.dtype,
            device=device,
        )
        labels = torch.zeros((self.cells, width), dtype=torch.long, device=device)
        mask = torch.zeros((self.cells, width), dtype=features.dtype, device=device)
        for cell, (indices, flips) in enumerate(batches):
            count = len(indices)
            if count:
                rows, labs = first.batch(indices, flips)
                features[cell, :count], labels[cell, :count] = rows, labs
                mask[cell, :count] = 1.0
        return features, labels, mask

    def _row_losses(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        per_row = self.engines[0].settings.per_sample_loss(
            logits.reshape(-1, 2), labels.reshape(-1)
        )
        return per_row.reshape(labels.shape)

    def _dp_step(self, batches: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> list[float]:
        features, labels, mask = self._gather(batches)
        with torch.enable_grad():
            logits, taps = self.forward(features.detach())
            losses = self._row_losses(logits, labels) * mask
            outputs = taps[1::2]
            grads = torch.autograd.grad(losses.sum(), outputs)
        inputs = [t.detach() for t in taps[0::2]]
        squared = torch.zeros_like(mask)
        for a, g in zip(inputs, grads, strict=True):
            g_sq = g.pow(2).sum(-1)
            squared += g_sq * a.pow(2).sum(-1) + g_sq  # weight, then bias (||g|| * ||a||, ||g||)
        factors = (
            torch.stack(
                [
                    clip_factors(squared[cell].sqrt(), engine.settings.dp.max_grad_norm)  # type: ignore[union-attr]
                    for cell, engine in enumerate(self.engines)
                ]
            )
            * mask
        )
        sums: list[torch.Tensor] = []
        for a, g in zip(inputs, grads, strict=True):
            weighted = g * factors.unsqueeze(-1)
            sums += [torch.bmm(weighted.transpose(1, 2), a), weighted.sum(1)]
        for stacked in self.stacked:
            stacked.grad = torch.empty_like(stacked)
        for cell, engine in enumerate(self.engines):
            assert engine.mechanism is not None
            noisy = engine.mechanism.privatize([s[cell] for s in sums])
            for stacked, value in zip(self.stacked, noisy, strict=True):
                assert stacked.grad is not None
                stacked.grad[cell] = value
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        counts = mask.sum(1)
        means = (losses.detach().sum(1) / counts.clamp(min=1)).tolist()
        return [m if c > 0 else float("nan") for m, c in zip(means, counts.tolist(), strict=True)]

    def _plain_step(self, batches: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> list[float]:
        features, labels, mask = self._gather(batches)
        logits, _ = self.forward(features)
        per_cell = (self._row_losses(logits, labels) * mask).sum(1) / mask.sum(1)
        per_cell.sum().backward()  # cells share no parameter: each gets its own mean's gradient
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return per_cell.detach().tolist()

    @torch.no_grad()
    def _write_back(self) -> None:
        for cell, engine in enumerate(self.engines):
            for parameter, stacked in zip(engine.head.parameters(), self.stacked, strict=True):
                parameter.copy_(stacked[cell])


def _layer_plan(head: nn.Module) -> list[nn.Module | None]:
    """The head as a list: None for each Linear (its stacked weight and bias), else the
    elementwise module to apply; refuses any other layout."""
    linears = head_linears(head)  # raises for layers without an exact per-sample rule
    modules = [head] if isinstance(head, nn.Linear) else list(head.children())
    plan: list[nn.Module | None] = []
    for module in modules:
        if isinstance(module, nn.Linear):
            if module.bias is None:
                raise ConfigError("the grid engine needs Linear layers with a bias")
            plan.append(None)
        elif isinstance(module, nn.Dropout):
            raise ConfigError("the grid engine cannot reproduce per-cell dropout")
        else:
            plan.append(module)
    if not linears or not all(p.requires_grad for p in head.parameters()):
        raise ConfigError("the grid engine trains whole heads (model.trainable=head)")
    return plan


def vectorised_optimisation(
    optimizer: str, augmentation_multiplicity: int, ema_decay: float | None
) -> bool:
    """Whether the grid engine runs this optimisation: the paper's only (AdamW, one flip per
    record, no weight averaging). The one rule for grid membership (`runs.grid.grid_key`)
    and for the engine's own refusal."""
    return (optimizer, augmentation_multiplicity, ema_decay) == ("adamw", 1, None)


def _check_compatible(engines: Sequence[CachedEngine]) -> None:
    """Cells may differ only in seed and noise multiplier (and so target epsilon); the paper's
    optimisation only (`vectorised_optimisation`)."""
    first = engines[0].settings
    if not all(
        vectorised_optimisation(
            e.settings.optimizer, e.settings.augmentation_multiplicity, e.settings.ema_decay
        )
        for e in engines
    ):
        raise ConfigError(
            "the grid engine runs AdamW with one flip per record and no weight averaging; "
            "other recipes train cell by cell"
        )
    for engine in engines[1:]:
        other = engine.settings
        same = (
            other.batch_size == first.batch_size
            and other.lr == first.lr
            and other.weight_decay == first.weight_decay
            and other.label_smoothing == first.label_smoothing
            and other.flips == first.flips
            and (other.dp is None) == (first.dp is None)
            and engine.train_features is engines[0].train_features
        )
        if same and first.dp is not None and other.dp is not None:
            same = (
                other.dp.sample_rate == first.dp.sample_rate
                and other.dp.steps_per_epoch == first.dp.steps_per_epoch
                and other.dp.unit == first.dp.unit == "patch"
            )
        if not same:
            raise ConfigError(
                "grid cells must share features, batch, lr, weight decay, label smoothing, "
                "flips and (under DP) sample rate, steps and the patch unit"
            )
