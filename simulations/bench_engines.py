"""Benchmark: one DP-SGD epoch of the naive vs the cached engine on the same data, side by side.

    .venv/bin/python -m simulations.bench_engines [model=efficientnet_lite0] [n=64] [batch=32]

Prints seconds per step of each engine (cached: with and without its one-off feature pass) and
the ratio. Uses random pixels, so it needs no data; weights are random (speed does not care).
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch

from common.config.compose import compose_config
from common.data.images import LoadedPatches
from common.data.patch_set import PatchRecord, PatchSet
from common.models.classifier import build_classifier
from common.models.policies import apply_trainable_policy
from common.training.cached_engine import CachedEngine
from common.training.naive_engine import NaiveEngine
from common.training.settings import DPSettings, EngineSettings


def main(argv: list[str]) -> None:
    options = dict(a.split("=", 1) for a in argv)
    n, batch = int(options.get("n", 64)), int(options.get("batch", 32))
    config = compose_config(
        [f"model={options.get('model', 'efficientnet_lite0')}", "model.weights=none"]
    )
    size = config.data.image_size
    rng = np.random.default_rng(0)
    records = [PatchRecord(f"/bench/{i}.png", i % 2, f"P{i}") for i in range(n)]
    data = LoadedPatches(PatchSet(records), rng.integers(0, 256, (n, size, size), dtype=np.uint8))
    steps = -(-n // batch)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    settings = EngineSettings(
        batch_size=batch,
        lr=1e-5,
        weight_decay=1e-8,
        label_smoothing=0.1,
        flips=True,
        seed=0,
        device=device,
        backbone_train_mode=False,
        feature_batch_size=16,
        dp=DPSettings(
            noise_multiplier=1.0, sample_rate=1 / steps, max_grad_norm=1.0, steps_per_epoch=steps
        ),
    )
    timings = {}
    for name, engine_class in (("naive", NaiveEngine), ("cached", CachedEngine)):
        model = build_classifier(config.model)
        apply_trainable_policy(model, "head")
        start = time.perf_counter()
        engine = engine_class(model, data, {}, settings)
        setup = time.perf_counter() - start
        start = time.perf_counter()
        engine.train_epoch()
        timings[name] = (setup, (time.perf_counter() - start) / steps)
    naive_step, cached_step = timings["naive"][1], timings["cached"][1]
    print(
        f"device {device}, model {config.model.name}, {size}px, N={n}, batch {batch}, {steps} steps"
    )
    print(f"{'engine':8} {'setup s':>9} {'s/step':>10}")
    for name, (setup, per_step) in timings.items():
        print(f"{name:8} {setup:9.2f} {per_step:10.4f}")
    print(
        f"per-step ratio naive/cached: {naive_step / cached_step:.0f}x; "
        f"cached feature pass pays for itself after "
        f"{timings['cached'][0] / max(naive_step - cached_step, 1e-9):.1f} naive steps"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
