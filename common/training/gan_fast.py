"""The MCGAN fast path's options, resolved once per run: precision (bf16 autocast on CUDA only),
channels-last memory format, and torch.compile with an eager fallback.

bf16 is refused on a CPU (this project's CPUs have no fast bf16 convolutions and the equivalence
tests compare fp32); `precision=auto` is bf16 on CUDA without DP and fp32 otherwise, logged.
The DP refusals (channels-last, bf16, compile) live in `gan_schema.check_fast_with_dp`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from common.config.gan_schema import GanTrainConfig
from common.errors import ConfigError

log = logging.getLogger(__name__)


@functools.cache
def _note_auto(chosen: str, device: str, dp: bool) -> None:
    """Logged once per process and setting (a grid builds one trainer per GAN)."""
    log.info("gan.train.precision=auto: %s on %s%s", chosen, device, " under DP" if dp else "")


def resolve_precision(train: GanTrainConfig, dp: bool, device: torch.device) -> str:
    """'fp32' or 'bf16' for this run (see the module docstring)."""
    if train.precision == "auto":
        chosen = "bf16" if device.type == "cuda" and not dp else "fp32"
        _note_auto(chosen, str(device), dp)
        return chosen
    if train.precision == "bf16" and device.type != "cuda":
        raise ConfigError(
            f"gan.train.precision=bf16 autocasts on CUDA only and this run is on {device}: use "
            "gan.train.precision=fp32 (or auto, which is fp32 off CUDA)"
        )
    return train.precision


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast for the networks' forward passes, or nothing."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def memory_format(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format


def configure_backends(train: GanTrainConfig, device: torch.device) -> None:
    """cuDNN autotuning for the fixed shapes of the fast path (process-wide, logged)."""
    if device.type == "cuda" and (train.fast_loop or train.channels_last):
        torch.backends.cudnn.benchmark = True
        log.info("gan fast path: torch.backends.cudnn.benchmark=True")


def mark_step(compile_mode: str) -> None:
    """CUDA graphs (compile=reduce-overhead) may reuse the previous step's output memory from
    here on: the step's own outputs stay valid until the next call."""
    if compile_mode == "reduce-overhead":
        torch.compiler.cudagraph_mark_step_begin()


class CompiledOrEager:
    """A module called through `torch.compile`, or eagerly once compiling has failed (the reason
    is logged and kept in `fallback_reason`). The module itself stays the one checkpointed."""

    def __init__(self, module: nn.Module, mode: str, name: str) -> None:
        self.module, self.name = module, name
        self.fallback_reason: str | None = None
        self.compiled: Callable[..., Any] | None = None
        if mode != "none":
            try:
                self.compiled = torch.compile(module, mode=mode)
            except Exception as error:  # e.g. no backend for this platform
                self._fall_back(error)

    @property
    def active(self) -> bool:
        return self.compiled is not None

    def _fall_back(self, error: BaseException) -> None:
        self.compiled = None
        self.fallback_reason = f"{type(error).__name__}: {error}".splitlines()[0][:500]
        log.warning(
            "gan: torch.compile of the %s failed (%s); it runs eager",
            self.name,
            self.fallback_reason,
        )

    def __call__(self, *args: torch.Tensor) -> torch.Tensor:
        if self.compiled is not None:
            try:
                return self.compiled(*args)
            except Exception as error:  # a compile error surfaces at the first call
                self._fall_back(error)
        return self.module(*args)


def probe_compiled(
    generator: CompiledOrEager,
    discriminator: CompiledOrEager,
    *,
    leading: tuple[int, ...],
    latent_dim: int,
    image_size: int,
    precision: str,
    device: torch.device,
) -> None:
    """One forward + backward through each compiled network on made-up inputs (leading dims
    `leading`: (batch,) or (GANs, batch)), so a compile error, forward or backward, falls back
    to eager before training. A generator of its own: the run's draws stay the baseline's.
    Weights, running statistics and gradients are restored afterwards."""
    probe = torch.Generator().manual_seed(0)
    z = torch.randn(*leading, latent_dim, generator=probe).to(device)
    labels = torch.randint(0, 2, leading, generator=probe).to(device)
    images = torch.rand(*leading, 1, image_size, image_size, generator=probe).to(device)
    modules = [generator.module, discriminator.module]
    saved = [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in modules]
    for forward, inputs in ((generator, (z, labels)), (discriminator, (images, labels))):
        if forward.compiled is None:
            continue
        try:
            with autocast(precision, device):
                out = forward.compiled(*inputs)
            out.float().sum().backward()
        except Exception as error:
            forward._fall_back(error)
    for module, state in zip(modules, saved, strict=True):
        module.load_state_dict(state)
        module.zero_grad(set_to_none=True)
