"""Issue #12's prepared GPU check: one command, under about 8 minutes on an H100/H200, short
measurement windows and projected totals, written to OUT/summary.md and OUT/summary.json.

    python -m simulations.gpu_check OUT [device=cuda] [tiny=false] [budget_s=450] [compile=true]

Sections, each a subprocess with its own time limit, cut to what is left of `budget_s` (one that
fails or runs out is recorded and the next one runs):
  environment   torch, CUDA, the device;
  gan           full MCGAN at batch 16: eager fp32 vs fast (bf16 + channels-last + fast loop) vs
                3 GANs batched, projected to 3 GANs x 1.4k epochs of 1104 patches; DP rows;
  features      the frozen feature pass (img/s, EfficientNet-Lite0 and torchvision Swin-T at
                224 px): fp32 as the engines run it, and bf16 autocast + channels-last;
  dp-finetune   `mammofl bench dp-finetune` on the device: EfficientNet-Lite0 x 12 cells, then
                torchvision Swin-T x 51 cells (17 frozen-backbone rows x 3 seeds);
  gan-compile   the fast and batched GAN rows again with torch.compile (reduce-overhead: CUDA
                graphs); a compile that fails falls back to eager and says why.
Random data and random weights throughout: nothing from ../shared is needed. `device=cpu
tiny=true` runs every section at toy sizes on a CPU (a check of the script, about a minute;
compile is skipped there unless compile=true).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from common.config.option_values import flag, key_values, number

ROOT = Path(__file__).resolve().parents[1]
BUDGET_S = 450  # the whole check; each section's limit is cut to what is left of it


@dataclass
class Section:
    name: str
    args: list[str]  # after `python -m`
    limit_s: int
    json_file: str | None = None  # a file the section writes under OUT, read into `parsed`


@dataclass
class Outcome:
    name: str
    command: str
    rc: int | None
    wall_s: float
    timed_out: bool
    output_tail: str
    parsed: object = None


def sections(out: Path, *, tiny: bool, device: str, compile_: bool) -> list[Section]:
    """The check's sections, full size or toy size (`tiny`)."""
    gan = ["simulations.bench_gan", f"device={device}", "gans=3", "batch=16"]
    gan += ["sizes=tiny", "steps=2"] if tiny else ["sizes=full", "steps=50"]
    features = ["simulations.gpu_check", "features", f"device={device}"]
    features += ["models=tiny_swin", "size=32", "n=64"] if tiny else []
    finetune = ["simulations.bench_dp_finetune"]
    effnet = ["model=efficientnet_lite0", "cells=12", "naive_steps=2", "measure_epochs=10"]
    swin = ["model=swin_t_torchvision", "cells=51", "naive_steps=2", "measure_epochs=5"]
    if tiny:
        small = ["size=32", "n=32", "batch=8", "epochs=2", "naive_steps=1", "measure_epochs=1"]
        effnet = ["model=tiny_swin", "cells=3", *small]
        swin = ["model=tiny_swin", "cells=6", *small]
    env = ["simulations.gpu_check", "environment", f"device={device}"]
    chosen = [
        Section("environment", env, 60),
        Section("gan", [*gan, f"json={out / 'gan.json'}"], 120, "gan.json"),
        Section("features", [*features, f"json={out / 'features.json'}"], 60, "features.json"),
        Section(f"dp-finetune {effnet[0][6:]} x{effnet[1][6:]}", [*finetune, *effnet], 90),
        Section(f"dp-finetune {swin[0][6:]} x{swin[1][6:]}", [*finetune, *swin], 120),
    ]
    if compile_:
        compiled = [*gan, "dp=off", "modes=eager,fast,batched", "compile=reduce-overhead"]
        chosen.append(
            Section(
                "gan-compile",
                [*compiled, f"json={out / 'gan_compile.json'}"],
                240,
                "gan_compile.json",
            )
        )
    return chosen


def run_section(section: Section, out: Path, limit_s: float, env: dict[str, str]) -> Outcome:
    command = [sys.executable, "-m", *section.args]
    started = time.perf_counter()
    try:
        done = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=limit_s
        )
        rc, timed_out, text = done.returncode, False, done.stdout + done.stderr
    except subprocess.TimeoutExpired as expired:
        rc, timed_out = None, True
        text = "".join(
            part.decode(errors="replace") if isinstance(part, bytes) else part or ""
            for part in (expired.stdout, expired.stderr)
        )
    parsed = None
    if section.json_file and (out / section.json_file).is_file():
        parsed = json.loads((out / section.json_file).read_text())
    return Outcome(
        section.name,
        " ".join(["python", "-m", *section.args]),
        rc,
        round(time.perf_counter() - started, 1),
        timed_out,
        text[-6000:],
        parsed,
    )


def gan_verdict(parsed: object) -> list[str]:
    """The issue's GAN acceptance read off the gan section: >= 4x eager fp32 per GAN and 3
    GANs x 1.4k epochs in <= 5 minutes."""
    if not isinstance(parsed, dict):
        return ["GAN section: no result"]
    rows = [r for r in parsed["results"] if not r["dp"]]
    eager = next((r for r in rows if r["mode"] == "eager"), None)
    lines = []
    for row in rows:
        if eager is None or row["mode"] == "eager":
            continue
        per_gan = row["steps_per_second"] / eager["steps_per_second"]
        total = row["gans"] * per_gan
        lines.append(
            f"{row['mode']} x{row['gans']} ({row['precision']}, channels_last="
            f"{row['channels_last']}, compile={row['compile']}): {per_gan:.2f}x eager per GAN, "
            f"{total:.2f}x throughput, 3 GANs x 1.4k epochs projected "
            f"{row['projected_s'] / 60:.1f} min (target <= 5 min, >= 4x)"
        )
    return lines


def write_summary(out: Path, outcomes: list[Outcome], meta: dict[str, object]) -> None:
    (out / "summary.json").write_text(
        json.dumps({**meta, "sections": [asdict(o) for o in outcomes]}, indent=2, default=str)
    )
    lines = [f"# GPU check ({meta['device']}, tiny={meta['tiny']})", ""]
    for outcome in outcomes:
        state = "timed out" if outcome.timed_out else f"rc {outcome.rc}"
        lines += [f"## {outcome.name}: {state}, {outcome.wall_s} s", "", f"`{outcome.command}`", ""]
        if outcome.name.startswith("gan"):
            lines += [f"- {line}" for line in gan_verdict(outcome.parsed)] + [""]
        lines += ["```", outcome.output_tail.strip()[-3000:], "```", ""]
    (out / "summary.md").write_text("\n".join(lines))


def environment(device: str) -> None:
    import torch

    facts: dict[str, object] = {"torch": torch.__version__, "cuda": torch.version.cuda}
    if device != "cpu" and torch.cuda.is_available():
        facts |= {
            "device": torch.cuda.get_device_name(),
            "capability": torch.cuda.get_device_capability(),
            "memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1),
            "bf16": torch.cuda.is_bf16_supported(),
        }
    else:
        from common.training.gan_speed import device_name

        facts["device"] = device_name(torch.device("cpu"))
    print(json.dumps(facts))


def features(options: dict[str, str]) -> None:
    """img/s of the frozen feature pass per backbone: fp32 as the engines run it
    (`extract_features`), and bf16 autocast + channels-last beside it (CUDA only)."""
    import numpy as np
    import torch

    from common.config.compose import compose_config
    from common.data.images import LoadedPatches, to_model_input
    from common.data.patch_set import PatchRecord, PatchSet
    from common.models.classifier import build_classifier
    from common.training.features import extract_features
    from common.training.settings import resolve_device

    device = resolve_device(options.get("device", "auto"))
    n, batch = int(options.get("n", 2048)), int(options.get("batch", 256))
    rates: dict[str, dict[str, float]] = {}
    for model in options.get("models", "efficientnet_lite0,swin_t_torchvision").split(","):
        config = compose_config([f"model={model}", "model.weights=none"])
        size = int(options.get("size", 0)) or config.data.image_size
        backbone = build_classifier(config.model).backbone.to(device).eval()
        pixels = np.random.default_rng(0).integers(0, 256, (n, size, size), dtype=np.uint8)
        records = [PatchRecord(f"/bench/{i}.png", i % 2, f"P{i}") for i in range(n)]
        loaded = LoadedPatches(PatchSet(records), pixels)
        rates[model] = {}
        for _ in range(2):  # the first pass warms up (cuDNN autotuning, the frozen graph)
            started = time.perf_counter()
            extract_features(backbone, loaded, (0,), batch, device)
            rates[model]["fp32_img_per_s"] = n / (time.perf_counter() - started)
        if device.type == "cuda":
            backbone.to(memory_format=torch.channels_last)
            for _ in range(2):
                torch.cuda.synchronize()
                started = time.perf_counter()
                with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
                    for start in range(0, n, batch):
                        images = to_model_input(pixels[start : start + batch]).to(device)
                        backbone(images.contiguous(memory_format=torch.channels_last))
                torch.cuda.synchronize()
                rates[model]["bf16_channels_last_img_per_s"] = n / (time.perf_counter() - started)
    print(json.dumps({"device": str(device), "n": n, "batch": batch, "rates": rates}))
    if "json" in options:
        Path(options["json"]).write_text(json.dumps(rates, indent=2))


def main(argv: list[str]) -> int:
    if argv and argv[0] in ("features", "environment"):
        options = dict(a.split("=", 1) for a in argv[1:])
        if argv[0] == "environment":
            environment(options.get("device", "cuda"))
        else:
            features(options)
        return 0
    if not argv or "=" in argv[0]:
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(argv[0]).resolve()
    options = key_values(argv[1:], ("device", "tiny", "budget_s", "compile"))
    device, tiny = options.get("device", "cuda"), flag("tiny", options.get("tiny", "false"))
    budget = number("budget_s", options.get("budget_s", BUDGET_S), positive=True, example="600")
    compile_ = flag("compile", options.get("compile", "false" if tiny else "true"))
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", MAMMOFL_OFFLINE="1")
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    started, outcomes = time.perf_counter(), []
    for section in sections(out, tiny=tiny, device=device, compile_=compile_):
        left = budget - (time.perf_counter() - started)
        if left < 10:
            outcomes.append(Outcome(section.name, "", None, 0.0, True, "skipped: budget spent"))
            continue
        outcome = run_section(section, out, min(section.limit_s, left), env)
        print(f"{outcome.name}: rc {outcome.rc}, {outcome.wall_s} s", flush=True)
        outcomes.append(outcome)
        write_summary(out, outcomes, {"device": device, "tiny": tiny, "budget_s": budget})
    print(f"wrote {out / 'summary.md'} and {out / 'summary.json'}")
    return 0 if all(o.rc == 0 for o in outcomes) else 1


if __name__ == "__main__":
    from simulations.cli import script_main

    script_main("gpu_check", main)
