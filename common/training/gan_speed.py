"""MCGAN training speed on random data (`mammofl bench gan`): the eager fp32 baseline, the fast
path (fast loop, channels-last, bf16 on CUDA, optional compile) and G GANs batched as one
program, each timed over one epoch after a warm-up epoch, with a projection to a full run.

Speed does not depend on pixel content, so the data are random 8-bit patches; every GAN of a
batched run gets its own patches and seed.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from common.config.gan_schema import GanConfig, GanDPConfig, GanModelConfig, GanTrainConfig
from common.training.gan_grid import GanGrid
from common.training.gan_trainer import GanTrainer

MODES = ("eager", "fast", "batched")


@dataclass(frozen=True)
class SpeedResult:
    mode: str  # eager | fast | batched
    gans: int  # GANs trained together (1 unless batched)
    dp: bool
    steps_per_second: float  # each GAN's own steps per second
    warmup_seconds: float  # the warm-up epoch (allocations, autotuning, compiling)
    precision: str
    channels_last: bool
    compile: str
    compile_fallback: str | None  # why compile fell back to eager, if it did

    @property
    def gan_steps_per_second(self) -> float:
        """Steps of all GANs together per second (the throughput)."""
        return self.gans * self.steps_per_second

    def projected_seconds(self, gans: int, steps_per_gan: int) -> float:
        """Wall time for `gans` GANs of `steps_per_gan` steps: one after another, or in rounds
        of `self.gans` when batched."""
        rounds = math.ceil(gans / self.gans)
        return rounds * steps_per_gan / self.steps_per_second

    def label(self) -> str:
        parts = [self.precision] + (["channels-last"] if self.channels_last else [])
        parts += [f"compile={self.compile}"] if self.compile != "none" else []
        name = {"eager": "eager", "fast": "fast", "batched": f"batched x{self.gans}"}[self.mode]
        note = " (compile fell back to eager)" if self.compile_fallback else ""
        return f"{name} ({', '.join(parts)}){note}"


def mode_config(
    model: GanModelConfig, mode: str, *, dp: bool, batch: int, compile_mode: str, seed: int
) -> GanConfig:
    """The baseline for `eager`; the fast options for `fast` and `batched` (channels-last off
    and fp32 under DP, which refuses them)."""
    train = GanTrainConfig(epochs=2, batch_size=batch)
    if mode != "eager":
        train = dataclasses.replace(
            train, fast_loop=True, channels_last=not dp, precision="auto", compile=compile_mode
        )
    return GanConfig(
        model=model, train=train, dp=GanDPConfig(enabled=dp, target_epsilon=10.0), seed=seed
    )


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    model: GanModelConfig,
    mode: str,
    *,
    steps: int,
    device: torch.device,
    dp: bool = False,
    gans: int = 1,
    batch: int = 16,
    compile_mode: str = "none",
) -> SpeedResult:
    """Steps/s per GAN over one epoch of `steps` steps, after a warm-up epoch."""
    gans = gans if mode == "batched" else 1
    n = batch * steps
    with tempfile.TemporaryDirectory() as folder:
        trainers = []
        for g in range(gans):
            rng = np.random.default_rng(g)
            pixels = rng.integers(0, 256, (n, model.image_size, model.image_size), np.uint8)
            config = mode_config(
                model, mode, dp=dp, batch=batch, compile_mode=compile_mode, seed=42 + g
            )
            out = Path(folder) / f"gan{g}"
            trainers.append(GanTrainer(config, pixels, np.arange(n) % 2, out, device))
        program: GanTrainer | GanGrid = GanGrid(trainers) if mode == "batched" else trainers[0]
        run = program.train_epoch
        started = time.perf_counter()
        run()  # warm-up
        _synchronize(device)
        warmup = time.perf_counter() - started
        started = time.perf_counter()
        run()
        _synchronize(device)
        elapsed = time.perf_counter() - started
    t = trainers[0]
    return SpeedResult(
        mode=mode,
        gans=gans,
        dp=dp,
        steps_per_second=steps / elapsed,
        warmup_seconds=warmup,
        precision=t.precision,
        channels_last=t.config.train.channels_last,
        compile=t.config.train.compile,
        compile_fallback=program.compile_fallback,
    )


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model (Linux /proc/cpuinfo) and torch's thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        model = next(
            line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")
        )
    except (OSError, StopIteration):
        model = "cpu"
    return f"{model}, {torch.get_num_threads()} threads"


def steps_per_run(records: int, batch: int, epochs: int) -> int:
    """Steps one GAN takes for `epochs` epochs of `records` patches (non-DP: ceil(N / batch))."""
    return math.ceil(records / batch) * epochs
