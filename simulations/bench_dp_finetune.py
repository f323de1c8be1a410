"""Benchmark `dp-finetune`: one Table 1 cell on the naive engine, the cached engine and the grid
engine, at equal epsilon (same sigma, q and steps), side by side in one process.

    .venv/bin/mammofl bench dp-finetune [model=efficientnet_lite0] [n=1104] [batch=128]
        [epochs=300] [cells=12] [naive_steps=2] [measure_epochs=10] [size=<model's>]

Random pixels and random weights (speed does not depend on either). Baselines that would take
too long are measured over a few steps or epochs and projected to the full cell, and the output
says so: naive over `naive_steps` steps, cached and grid over `measure_epochs` epochs plus the
one-off feature pass. The grid trains `cells` cells (e.g. the 4 rows x 3 seeds of the release
grid) as one program; its per-cell time is the grid's time divided by the cells. On a CPU with
several cores, `grid/N` trains the same cells as N grids side by side on N threads (the lanes
of `mammofl table1`, `common.runs.grid_lanes`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import numpy as np
import torch

from common.config.compose import compose_config
from common.config.option_values import key_values, whole_number
from common.data.images import LoadedPatches
from common.data.patch_set import PatchRecord, PatchSet
from common.models.classifier import Classifier, build_classifier
from common.models.policies import apply_trainable_policy
from common.privacy.ledger import LedgerEvent, epsilon_of
from common.runs.grid_lanes import default_lanes, run_lanes
from common.training.cached_engine import CachedEngine
from common.training.grid_engine import GridCachedEngine
from common.training.naive_engine import NaiveEngine
from common.training.settings import DPSettings, EngineSettings
from simulations.machine import cpu_name

DEFAULTS = {
    "model": "efficientnet_lite0",
    "n": "1104",
    "batch": "128",
    "epochs": "300",
    "cells": "12",
    "naive_steps": "2",
    "measure_epochs": "10",
    "size": "0",  # 0: the model's own input size
}


def _model(name: str) -> Classifier:
    config = compose_config([f"model={name}", "model.weights=none", "model.drop_path_rate=0"])
    model = build_classifier(config.model)
    apply_trainable_policy(model, "head")
    return model


def _settings(n: int, batch: int, device: torch.device, seed: int) -> EngineSettings:
    steps = -(-n // batch)
    dp = DPSettings(
        noise_multiplier=4.6, sample_rate=1 / steps, max_grad_norm=1.0, steps_per_epoch=steps
    )
    return EngineSettings(
        batch_size=batch,
        lr=1e-5,
        weight_decay=1e-8,
        label_smoothing=0.1,
        flips=True,
        seed=seed,
        device=device,
        backbone_train_mode=False,
        feature_batch_size=64,
        dp=dp,
    )


def main(argv: Sequence[str]) -> None:
    options = DEFAULTS | key_values(argv, DEFAULTS)
    n, batch, epochs, cells, measure, naive_steps = (
        whole_number(k, options[k], minimum=1)
        for k in ("n", "batch", "epochs", "cells", "measure_epochs", "naive_steps")
    )
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    size = (
        whole_number("size", options["size"], minimum=0)
        or compose_config([f"model={options['model']}"]).data.image_size
    )
    rng = np.random.default_rng(0)
    records = [PatchRecord(f"/bench/{i}.png", i % 2, f"P{i}") for i in range(n)]
    data = LoadedPatches(PatchSet(records), rng.integers(0, 256, (n, size, size), dtype=np.uint8))
    settings = _settings(n, batch, device, 0)
    dp = settings.dp
    assert dp is not None
    steps = dp.steps_per_epoch * epochs
    event = LedgerEvent(
        noise_multiplier=dp.noise_multiplier, sample_rate=dp.sample_rate, steps=steps
    )
    epsilon = epsilon_of([event], 1e-4, "rdp")
    machine = torch.cuda.get_device_name() if device.type == "cuda" else cpu_name()
    print(
        f"dp-finetune on {device} ({machine}, {torch.get_num_threads()} threads): "
        f"{options['model']} {size}px, N={n}, batch {batch}, {epochs} epochs = {steps} steps, "
        f"sigma {dp.noise_multiplier}, q {dp.sample_rate:.4f}, epsilon {epsilon:.2f} (delta 1e-4) "
        "for every engine"
    )

    naive = NaiveEngine(_model(options["model"]), data, {}, settings)
    indices = torch.arange(min(batch, n))
    naive._dp_step(indices)  # warm-up
    started = time.perf_counter()
    for _ in range(naive_steps):
        naive._dp_step(indices)
    naive_step = (time.perf_counter() - started) / naive_steps
    naive.close()
    naive_cell = naive_step * steps

    started = time.perf_counter()
    cached = CachedEngine(_model(options["model"]), data, {}, settings)
    feature_pass = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(measure):
        cached.train_epoch()
    cached_epoch = (time.perf_counter() - started) / measure
    cached_cell = feature_pass + cached_epoch * epochs

    engines = [cached] + [
        CachedEngine(
            _model(options["model"]),
            data,
            {},
            _settings(n, batch, device, seed),
            features=cached.features(),
        )
        for seed in range(1, cells)
    ]
    grid = GridCachedEngine(engines)
    grid.train_epoch()  # warm-up
    started = time.perf_counter()
    for _ in range(measure):
        grid.train_epoch()
    grid_epoch = (time.perf_counter() - started) / measure
    grid_total = feature_pass + grid_epoch * epochs

    lanes = min(2, default_lanes(cells, [device]))
    lanes_epoch = grid_epoch
    if lanes > 1:  # the same cells as `lanes` grids side by side (common.runs.grid_lanes)
        parts = [engines[k::lanes] for k in range(lanes)]
        lane_grids = [GridCachedEngine(part) for part in parts]

        def train(part: list[GridCachedEngine], stop: threading.Event) -> list[None]:
            for _ in range(measure):
                part[0].train_epoch()
            return [None]

        run_lanes([[g] for g in lane_grids], lanes, lambda g, _: [g[0].train_epoch()], _none)
        started = time.perf_counter()
        run_lanes([[g] for g in lane_grids], lanes, train, _none)
        lanes_epoch = (time.perf_counter() - started) / measure
    lanes_total = feature_pass + lanes_epoch * epochs

    header = ("engine", "one-off s", "s/epoch/cell", "cell s", f"{cells} cells s", "vs naive")
    print("{:8} {:>10} {:>13} {:>9} {:>11} {:>9}".format(*header))
    rows: list[tuple[str, float, float, float, float]] = [
        ("naive", 0.0, naive_step * dp.steps_per_epoch, naive_cell, naive_cell * cells),
        (
            "cached",
            feature_pass,
            cached_epoch,
            cached_cell,
            feature_pass + cached_epoch * epochs * cells,
        ),
        ("grid", feature_pass, grid_epoch / cells, grid_total / cells, grid_total),
    ]
    if lanes > 1:
        rows.append(
            (f"grid/{lanes}", feature_pass, lanes_epoch / cells, lanes_total / cells, lanes_total)
        )
    for name, setup, per_epoch, cell, total in rows:
        speedup = naive_cell * cells / total
        print(f"{name:8} {setup:10.1f} {per_epoch:13.4f} {cell:9.1f} {total:11.1f} {speedup:8.0f}x")
    one_by_one = feature_pass + cached_epoch * epochs * cells
    print(
        f"projected from {options['naive_steps']} naive steps and {measure} cached/grid epochs; "
        f"grid vs cached for {cells} cells: {one_by_one / grid_total:.1f}x"
    )
    if lanes > 1:
        print(
            f"lanes: grid/{lanes} is the {cells} cells as {lanes} grids side by side on {lanes} "
            f"threads, one intra-op thread each (mammofl table1's lanes): "
            f"{grid_epoch / lanes_epoch:.2f}x one grid's training"
        )


def _none(grid: list[GridCachedEngine], results: list[None]) -> None:
    """Nothing to write after a benchmark's lane."""


if __name__ == "__main__":
    from simulations.cli import script_main

    script_main("bench_dp_finetune", main)
