"""MCGAN training speed, side by side in one process: the eager fp32 baseline, the fast path
(fast loop + channels-last + bf16 autocast on CUDA, optionally torch.compile) and G GANs batched
as one program, with and without DP on the discriminator, the device named.

    .venv/bin/mammofl bench gan [steps=10] [sizes=full,reduced] [dp=both|off|on]
        [modes=eager,fast,batched] [gans=3] [batch=16] [compile=none|default|reduce-overhead]
        [device=auto] [epochs=1400] [n=1104] [json=FILE]

Random 8-bit data (speed does not depend on content). Each row is timed over one epoch of
`steps` steps after a warm-up epoch of as many. "steps/s/GAN" is how fast each GAN advances;
"GAN-steps/s" adds up the GANs trained together. The last column projects the wall time of
`gans` GANs of `epochs` epochs over `n` patches (the paper's 1.4k epochs of 1104 patches): one
after another for eager and fast, together for batched. Under DP the fast path keeps fp32 and
the contiguous layout (refused under DP) and there is no batched row (non-DP only).
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import torch

from common.config.gan_schema import GanModelConfig
from common.config.option_values import key_values, whole_number
from common.training.gan_speed import (
    MODES,
    SpeedResult,
    device_name,
    measure,
    steps_per_run,
)
from common.training.settings import resolve_device

SIZES = {
    "full": GanModelConfig(),
    "reduced": GanModelConfig(image_size=64, generator_width=16, discriminator_width=16),
    "tiny": GanModelConfig(
        image_size=32,
        latent_dim=16,
        embedding_dim=8,
        label_channels=8,
        generator_width=8,
        discriminator_width=8,
    ),
}
DEFAULTS = {
    "steps": "10",
    "sizes": "full,reduced",
    "dp": "both",
    "modes": ",".join(MODES),
    "gans": "3",
    "batch": "16",
    "compile": "none",
    "device": "auto",
    "epochs": "1400",
    "n": "1104",
}
HEADER = "{:8} {:>4} {:>3}  {:52} {:>12} {:>8} {:>12} {:>8} {:>12}"


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def main(argv: list[str]) -> None:
    options = DEFAULTS | key_values(argv, [*DEFAULTS, "json"])
    for noise in ("Full backward hook is firing", "Optimal order is the largest alpha"):
        warnings.filterwarnings("ignore", message=noise)  # opacus, once per DP row
    steps, gans, batch, epochs, n = (
        whole_number(k, options[k], minimum=1) for k in ("steps", "gans", "batch", "epochs", "n")
    )
    modes = options["modes"].split(",")
    dps = {"both": [False, True], "off": [False], "on": [True]}[options["dp"]]
    device = resolve_device(options["device"])
    per_gan = steps_per_run(n, batch, epochs)
    print(
        f"device: {device} ({device_name(device)}), torch {torch.__version__}; batch {batch}; "
        f"{steps} steps per measurement after a warm-up epoch of as many"
    )
    print(
        f"projection: {gans} GANs x {epochs} epochs of {n} patches = {per_gan} steps per GAN; "
        "eager and fast one GAN after another, batched all together"
    )
    print(
        HEADER.format(
            "model",
            "px",
            "DP",
            "path",
            "steps/s/GAN",
            "vs eager",
            "GAN-steps/s",
            "vs eager",
            "projected",
        )
    )
    results: list[dict[str, object]] = []
    for size in options["sizes"].split(","):
        model = SIZES[size]
        for dp in dps:
            eager: SpeedResult | None = None
            for mode in modes:
                if mode == "batched" and dp:
                    continue  # the batched program is non-DP only
                result = measure(
                    model,
                    mode,
                    steps=steps,
                    device=device,
                    dp=dp,
                    gans=gans,
                    batch=batch,
                    compile_mode=options["compile"] if not dp else "none",
                )
                eager = result if mode == "eager" else eager
                base = eager.steps_per_second if eager else float("nan")
                projected = result.projected_seconds(gans, per_gan)
                print(
                    HEADER.format(
                        size,
                        model.image_size,
                        "yes" if dp else "no",
                        result.label(),
                        f"{result.steps_per_second:.2f}",
                        f"{result.steps_per_second / base:.2f}x",
                        f"{result.gan_steps_per_second:.2f}",
                        f"{result.gan_steps_per_second / base:.2f}x",
                        _duration(projected),
                    ),
                    flush=True,
                )
                if result.compile_fallback:
                    print(f"  compile fell back to eager: {result.compile_fallback}")
                results.append(
                    {"size": size, **dataclasses.asdict(result), "projected_s": projected}
                )
    if "json" in options:
        summary = {
            "device": str(device),
            "device_name": device_name(device),
            "torch": torch.__version__,
            "options": options,
            "steps_per_gan_projected": per_gan,
            "results": results,
        }
        Path(options["json"]).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    from simulations.cli import script_main

    script_main("bench_gan", main)
