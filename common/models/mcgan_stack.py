"""G MCGAN networks of one shape run as one: grouped convolutions (groups=G) over the GANs'
channels side by side, batched label branches. No operation mixes two GANs' channels (BatchNorm
normalises per channel over the batch), so GAN g computes what its own network would, with its
own weights, batch statistics and running statistics.

Every stacked tensor is the GANs' own tensors concatenated along dim 0 (0-d ones stacked): that
is the grouped-convolution weight layout, and GAN g's part is `part(name, g)`. `write_to` copies
the parts back into the G ordinary modules, whose checkpoints stay the ordinary format.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from common.errors import ConfigError
from common.models.mcgan import Discriminator, Generator


@dataclass(frozen=True)
class _Layer:
    kind: str  # conv | conv_t | batch_norm | relu | leaky_relu | tanh
    prefix: str  # the template's parameter prefix, e.g. "net.3"
    stride: int = 1
    padding: int = 0
    slope: float = 0.0
    eps: float = 1e-5
    momentum: float = 0.1


def _layer(module: nn.Module, prefix: str) -> _Layer:
    if isinstance(module, nn.ConvTranspose2d | nn.Conv2d):
        if module.bias is not None or module.groups != 1:
            raise ConfigError(f"batched MCGAN: {prefix} has a bias or groups; not supported")
        kind = "conv_t" if isinstance(module, nn.ConvTranspose2d) else "conv"
        return _Layer(kind, prefix, int(module.stride[0]), int(module.padding[0]))
    if isinstance(module, nn.BatchNorm2d) and module.momentum is not None:
        return _Layer("batch_norm", prefix, eps=module.eps, momentum=module.momentum)
    if isinstance(module, nn.LeakyReLU):
        return _Layer("leaky_relu", prefix, slope=module.negative_slope)
    if isinstance(module, nn.ReLU | nn.Tanh):
        return _Layer(type(module).__name__.lower(), prefix)
    raise ConfigError(
        f"batched MCGAN: layer {prefix} ({type(module).__name__}) is not supported (GroupNorm "
        "is the DP discriminator's; the batched program trains non-DP GANs only)"
    )


def _key(name: str) -> str:
    return name.replace(".", "__")


class StackedMCGAN(nn.Module):
    """The stacked tensors of G modules of one architecture, and their per-GAN parts."""

    def __init__(self, modules: Sequence[nn.Module]) -> None:
        super().__init__()
        self.groups = len(modules)
        template = modules[0]
        self.shape = template.shape
        self.layers = [_layer(m, f"net.{i}") for i, m in enumerate(template.net)]
        self.params = nn.ParameterDict()
        self.part_shapes: dict[str, torch.Size] = {}
        self.param_names = [name for name, _ in template.named_parameters()]
        for name, first in template.named_parameters():
            self.part_shapes[name] = first.shape
            parts = [m.get_parameter(name).detach() for m in modules]
            self.params[_key(name)] = nn.Parameter(self._join(parts))
        for name, first in template.named_buffers():
            self.part_shapes[name] = first.shape
            parts = [m.get_buffer(name).detach() for m in modules]
            self.register_buffer(_key(name), self._join(parts))

    @staticmethod
    def _join(parts: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(parts) if parts[0].dim() == 0 else torch.cat(parts)

    def tensor(self, name: str) -> torch.Tensor:
        key = _key(name)
        return self.params[key] if key in self.params else self.get_buffer(key)

    def part(self, name: str, g: int) -> torch.Tensor:
        """GAN g's part of a stacked parameter or buffer (a view)."""
        return self.part_of(self.tensor(name), name, g)

    def part_of(self, stacked: torch.Tensor, name: str, g: int) -> torch.Tensor:
        """GAN g's part of a tensor shaped like the stacked `name` (e.g. its Adam state)."""
        shape = self.part_shapes[name]
        return stacked[g] if not shape else stacked[g * shape[0] : (g + 1) * shape[0]]

    @torch.no_grad()
    def write_to(self, modules: Sequence[nn.Module]) -> None:
        """Copy every GAN's weights and running statistics into its ordinary module."""
        for g, module in enumerate(modules):
            for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
                tensor.copy_(self.part(name, g))

    def _label(self, labels: torch.Tensor) -> torch.Tensor:
        """Embedding -> Linear -> LeakyReLU per GAN: labels [G, N] -> [G, N, out]."""
        g = self.groups
        classes = self.part_shapes["label.0.weight"][0]
        offsets = torch.arange(g, device=labels.device)[:, None] * classes
        embedded = F.embedding(labels + offsets, self.tensor("label.0.weight"))
        weight = self.tensor("label.1.weight")
        out = weight.shape[0] // g
        bias = self.tensor("label.1.bias").view(g, 1, out)
        linear = torch.baddbmm(bias, embedded, weight.view(g, out, -1).transpose(1, 2))
        return F.leaky_relu(linear, 0.1)

    def _net(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            if layer.kind in ("conv", "conv_t"):
                op = F.conv2d if layer.kind == "conv" else F.conv_transpose2d
                weight = self.tensor(f"{layer.prefix}.weight")
                x = op(x, weight, None, layer.stride, layer.padding, groups=self.groups)
            elif layer.kind == "batch_norm":
                x = self._batch_norm(x, layer)
            elif layer.kind == "leaky_relu":
                x = F.leaky_relu(x, layer.slope)
            elif layer.kind == "relu":
                x = F.relu(x)
            else:
                x = torch.tanh(x)
        return x

    def _batch_norm(self, x: torch.Tensor, layer: _Layer) -> torch.Tensor:
        p = layer.prefix
        if self.training:
            self.tensor(f"{p}.num_batches_tracked").add_(1)
        return F.batch_norm(
            x,
            self.tensor(f"{p}.running_mean"),
            self.tensor(f"{p}.running_var"),
            self.tensor(f"{p}.weight"),
            self.tensor(f"{p}.bias"),
            self.training,
            layer.momentum,
            layer.eps,
        )


def _side_by_side(x: torch.Tensor) -> torch.Tensor:
    """[G, N, C, H, W] -> [N, G*C, H, W] (GAN g's channels at g*C .. g*C + C - 1)."""
    g, n, c, h, w = x.shape
    return x.transpose(0, 1).reshape(n, g * c, h, w)


class StackedGenerator(StackedMCGAN):
    def __init__(self, modules: Sequence[Generator]) -> None:
        super().__init__(modules)

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """z [G, N, latent], labels [G, N] -> images [G, N, 1, H, W]."""
        x = torch.cat([z, self._label(labels)], 2)[..., None, None]
        out = self._net(_side_by_side(x))  # [N, G, H, W]
        return out.transpose(0, 1).unsqueeze(2)


class StackedDiscriminator(StackedMCGAN):
    def __init__(self, modules: Sequence[Discriminator]) -> None:
        super().__init__(modules)

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """images [G, N, 1, H, W], labels [G, N] -> logits [G, N]."""
        g, n, _, h, w = images.shape
        condition = self._label(labels).view(g, n, 1, h, w)
        out = self._net(_side_by_side(torch.cat([images, condition], 2)))  # [N, G, 1, 1]
        return out.reshape(n, g).transpose(0, 1)
