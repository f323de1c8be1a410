"""MCGAN training throughput, side by side: full paper size vs the reduced CPU model, with and
without DP on the discriminator.

    .venv/bin/mammofl bench gan [steps=10] [sizes=full,reduced] [dp=both]

Random 8-bit data (speed does not depend on content); one epoch of `steps` batches of 16.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common.config.gan_schema import GanConfig, GanDPConfig, GanModelConfig, GanTrainConfig
from common.training.gan_trainer import GanTrainer
from common.training.settings import resolve_device

SIZES = {
    "full": GanModelConfig(),
    "reduced": GanModelConfig(image_size=64, generator_width=16, discriminator_width=16),
}


def steps_per_second(model: GanModelConfig, dp: bool, steps: int, device: torch.device) -> float:
    batch = 16
    n = batch * steps
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (n, model.image_size, model.image_size), dtype=np.uint8)
    config = GanConfig(
        model=model, train=GanTrainConfig(epochs=1, batch_size=batch), dp=GanDPConfig(enabled=dp)
    )
    with tempfile.TemporaryDirectory() as folder:
        trainer = GanTrainer(config, pixels, np.arange(n) % 2, Path(folder), device)
        trainer.train_epoch()  # warm-up (allocations, cudnn autotune)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        trainer.train_epoch()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return steps / (time.perf_counter() - start)


def main(argv: list[str]) -> None:
    options = dict(a.split("=", 1) for a in argv)
    steps = int(options.get("steps", 10))
    sizes = options.get("sizes", "full,reduced").split(",")
    dps = {"both": [False, True], "off": [False], "on": [True]}[options.get("dp", "both")]
    device = resolve_device(options.get("device", "auto"))
    name = (
        torch.cuda.get_device_name() if device.type == "cuda" else f"cpu x{torch.get_num_threads()}"
    )
    print(f"device: {name}; batch 16; {steps} steps per measurement")
    print(f"{'model':8} {'px':>4} {'DP':>4} {'steps/s':>9}")
    rates = {}
    for size in sizes:
        for dp in dps:
            rates[(size, dp)] = steps_per_second(SIZES[size], dp, steps, device)
            print(
                f"{size:8} {SIZES[size].image_size:4d} {'yes' if dp else 'no':>4} "
                f"{rates[(size, dp)]:9.2f}",
                flush=True,
            )
    for size in sizes:
        if (size, False) in rates and (size, True) in rates:
            print(f"{size}: DP costs {rates[(size, False)] / rates[(size, True)]:.2f}x")


if __name__ == "__main__":
    main(sys.argv[1:])
