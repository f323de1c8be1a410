"""`mammofl gan train|generate|score|memorisation`."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from common.atomic_io import atomic_savefig, atomic_write_png, atomic_write_text
from common.config.option_values import (
    flag,
    key_values,
    seed_number,
    seed_numbers,
    whole_number,
)
from common.config.schema import PatchSourceConfig
from common.data.images import LoadedPatches, load_patches
from common.data.readers import read_patch_source
from common.errors import ConfigError
from common.runs.output_lock import output_lock

if TYPE_CHECKING:
    from common.config.gan_schema import GanConfig
    from common.training.gan_trainer import GanTrainer

log = logging.getLogger("mammofl.gan")

GAN_USAGE = """usage: mammofl gan <train|generate|score|memorisation> [key=value ...]
  train         <hydra overrides: gan_preset=tiny|reduced|dp, train.epochs=, data.path=> out_dir=DIR
                [seeds=[42,43,44]: one MCGAN per seed in DIR/seed<k>, trained as one batched
                program without DP, one after another with DP]
                (resumes from DIR/checkpoints, or each DIR/seed<k>/checkpoints, when present)
  generate      checkpoint=PATH out_dir=DIR [n=3000 | malignant=N benign=M] [seed=0]
                [overwrite=true: replace a set already in out_dir]
  score         real=PATH synthetic=PATH [real_format=released|patchset real_split=train
                synthetic_format=patchset|released_synthetic backbone=efficientnet_lite0
                inception_weights=FILE seed=0 out=FILE.json]
  memorisation  real=PATH synthetic=PATH out_dir=DIR [same format options, backbone=]
"""


def _options(
    args: Sequence[str], allowed: Sequence[str], required: Sequence[str]
) -> dict[str, str]:
    try:
        options = key_values(args, allowed)
    except ConfigError as error:
        raise ConfigError(f"{error}\n{GAN_USAGE}") from None
    missing = [k for k in required if k not in options]
    if missing:
        raise ConfigError(f"missing {', '.join(missing)}=\n{GAN_USAGE}")
    return options


def _source(options: dict[str, str], role: str, default_format: str) -> PatchSourceConfig:
    fmt = options.get(f"{role}_format", default_format)
    # real patches: the GAN's training rows by default (a prepared folder also holds its test
    # patients, which the GAN never saw)
    default_split = "train" if fmt == "released" or (role == "real" and fmt == "patchset") else None
    split = options.get(f"{role}_split", default_split)
    return PatchSourceConfig(format=fmt, path=options[role], split=split)


def backbone_features(
    loaded_by_size: dict[str, LoadedPatches], backbone: str
) -> dict[str, np.ndarray]:
    """Backbone features (eval mode, no flips) of each set, from a `configs/model` group."""
    from common.config.compose import compose_config
    from common.models.classifier import build_classifier
    from common.training.features import extract_features
    from common.training.settings import resolve_device

    config = compose_config([f"model={backbone}"])
    model = build_classifier(config.model)
    device = resolve_device("auto")
    model.backbone.to(device)
    # a backbone built for one input size (tiny_swin: 32 px) gets the patches at that size
    size = int(config.model.kwargs.get("img_size", 0) or 0)
    return {
        name: extract_features(
            model.backbone,
            loaded.at_size(size) if size else loaded,
            (0,),
            16,
            device,
            progress=True,
        )[0].numpy()
        for name, loaded in loaded_by_size.items()
    }


def parse_seeds(value: str) -> list[int]:
    """`[42,43,44]` (or `42,43`) -> [42, 43, 44]; ConfigError naming the option otherwise."""
    return seed_numbers("seeds", value)


def latest_checkpoint(trainer: GanTrainer, saved: Path | None) -> str | None:
    """The checkpoint this call saved last, else the one it resumed from (a run already at
    gan.train.epochs saves nothing), else None."""
    if saved is not None:
        return str(saved)
    path = trainer.checkpoint_path(trainer.epoch)
    return str(path) if path.is_file() else None


def cmd_train(args: Sequence[str]) -> int:
    seeds = [a for a in args if a.startswith("seeds=")]
    if seeds:
        rest = [a for a in args if not a.startswith("seeds=")]
        return train_seeds(rest, parse_seeds(seeds[-1].partition("=")[2]))
    from common.config.compose import compose_gan_config

    config = compose_gan_config(args)
    if not config.out_dir:
        raise ConfigError("mammofl gan train needs out_dir=DIR")
    out_dir = Path(config.out_dir)
    with output_lock("gan train", out_dir=out_dir):
        return _train(config, out_dir)


def _train(config: GanConfig, out_dir: Path) -> int:
    from common.training.gan_trainer import GanTrainer
    from common.training.settings import resolve_device

    # a prepared site's manifest: its train rows only (never its val or test patients)
    loaded = load_patches(
        read_patch_source(config.data, default_split="train"), config.model.image_size
    )
    trainer = GanTrainer(
        config,
        loaded.pixels,
        np.asarray(loaded.patch_set.labels),
        out_dir,
        resolve_device(config.train.device),
    )
    if trainer.resume_latest():
        checkpoint = trainer.checkpoint_path(trainer.epoch)
        log.info("resumed from %s (epoch %d)", checkpoint, trainer.epoch)
    last = trainer.fit()
    print(
        json.dumps(
            {
                "epoch": trainer.epoch,
                "checkpoint": latest_checkpoint(trainer, last),
                "epsilon": trainer.epsilon(),
                "skipped": loaded.patch_set.skipped[:20],
            },
            indent=2,
        )
    )
    return 0


def train_seeds(args: Sequence[str], seeds: list[int]) -> int:
    """One MCGAN per seed on the same patches, in out_dir/seed<k>: a grid's GANs (the paper
    trains one per Table 1 seed). Without DP they train as one batched program (`GanGrid`:
    stacked networks, each GAN its own draws, Adam state and checkpoints); with DP one after
    another (the stacked discriminator has no exact per-sample clipping)."""
    from common.config.compose import compose_gan_config

    if any(a.startswith("seed=") for a in args):
        raise ConfigError("give seeds=[...] or seed=, not both")
    base = compose_gan_config(args)
    if not base.out_dir:
        raise ConfigError("mammofl gan train needs out_dir=DIR")
    out_dir = Path(base.out_dir)
    with output_lock("gan train", out_dir=out_dir):
        return _train_seeds(args, base, seeds, out_dir)


def _train_seeds(args: Sequence[str], base: GanConfig, seeds: list[int], out_dir: Path) -> int:
    from common.config.compose import compose_gan_config
    from common.training.gan_grid import GanGrid
    from common.training.gan_trainer import GanTrainer
    from common.training.settings import resolve_device

    loaded = load_patches(
        read_patch_source(base.data, default_split="train"), base.model.image_size
    )
    labels = np.asarray(loaded.patch_set.labels)
    device = resolve_device(base.train.device)
    trainers = []
    for seed in seeds:
        config = compose_gan_config([*args, f"seed={seed}"])
        out = out_dir / f"seed{seed}"
        trainer = GanTrainer(config, loaded.pixels, labels, out, device)
        if trainer.resume_latest():
            log.info("seed %d: resumed at epoch %d (%s)", seed, trainer.epoch, out)
        trainers.append(trainer)
    if base.dp.enabled:
        last = [t.fit() for t in trainers]
    else:  # one program per epoch reached (a seed added later, a kill between checkpoints)
        by_epoch: dict[int, list[int]] = {}
        for index, trainer in enumerate(trainers):
            by_epoch.setdefault(trainer.epoch, []).append(index)
        last = [None] * len(trainers)
        for indices in by_epoch.values():
            paths = GanGrid([trainers[i] for i in indices]).fit()
            for index, path in zip(indices, paths, strict=True):
                last[index] = path
    summary = [
        {"seed": s, "epoch": t.epoch, "checkpoint": latest_checkpoint(t, c), "epsilon": t.epsilon()}
        for s, t, c in zip(seeds, trainers, last, strict=True)
    ]
    print(json.dumps({"gans": summary, "skipped": loaded.patch_set.skipped[:20]}, indent=2))
    return 0


def cmd_generate(args: Sequence[str]) -> int:
    from common.training.gan_generate import generate_patch_set

    options = _options(
        args,
        ("checkpoint", "out_dir", "n", "malignant", "benign", "seed", "overwrite"),
        ("checkpoint", "out_dir"),
    )
    out_dir = Path(options["out_dir"])
    overwrite = flag("overwrite", options.get("overwrite", "false"))
    if "malignant" in options or "benign" in options:
        counts = {
            1: whole_number("malignant", options.get("malignant", 0), minimum=0),
            0: whole_number("benign", options.get("benign", 0), minimum=0),
        }
    else:
        n = whole_number("n", options.get("n", 3000), minimum=1)
        counts = {1: n - n // 2, 0: n // 2}
    seed = seed_number("seed", options.get("seed", 0))
    with output_lock("gan generate", out_dir=out_dir):
        held = (out_dir / "manifest.csv").is_file() or any((out_dir / "images").glob("*.png"))
        if held and not overwrite:
            raise ConfigError(
                f"{out_dir} already holds a generated set: a new one would mix with its images "
                "and replace its provenance; use another out_dir=, or overwrite=true to "
                "replace it"
            )
        # the old set goes only once the options and the checkpoint are known good
        patch_set = generate_patch_set(
            Path(options["checkpoint"]), out_dir, counts, seed=seed, replace=held
        )
    print(json.dumps({"out_dir": options["out_dir"], **patch_set.counts()}, indent=2))
    return 0


PAIR_OPTIONS = (
    "real",
    "synthetic",
    "real_format",
    "real_split",
    "synthetic_format",
    "synthetic_split",
    "backbone",
)


def _load_pair(options: dict[str, str]) -> tuple[dict[str, LoadedPatches], dict[str, np.ndarray]]:
    sets = {
        "real": read_patch_source(_source(options, "real", "released")),
        "synthetic": read_patch_source(_source(options, "synthetic", "patchset")),
    }
    native = {k: load_patches(v, 128) for k, v in sets.items()}
    wide = {k: load_patches(v, 224) for k, v in sets.items()}
    return native, backbone_features(wide, options.get("backbone", "efficientnet_lite0"))


def cmd_score(args: Sequence[str]) -> int:
    from common.eval.synthetic_score import score_sets

    allowed = (*PAIR_OPTIONS, "inception_weights", "seed", "out")
    options = _options(args, allowed, ("real", "synthetic"))
    native, features = _load_pair(options)
    report = score_sets(
        native["real"],
        native["synthetic"],
        features["real"],
        features["synthetic"],
        seed=seed_number("seed", options.get("seed", 0)),
        inception_weights=options.get("inception_weights"),
    )
    report["backbone"] = options.get("backbone", "efficientnet_lite0")
    text = json.dumps(report, indent=2)
    if "out" in options:
        atomic_write_text(Path(options["out"]), text + "\n")
    print(text)
    return 0


def cmd_memorisation(args: Sequence[str]) -> int:
    from common.eval.memorisation import memorisation_check

    options = _options(args, (*PAIR_OPTIONS, "out_dir"), ("real", "synthetic", "out_dir"))
    native, features = _load_pair(options)
    real, syn = native["real"], native["synthetic"]
    report = memorisation_check(
        syn.pixels,
        real.pixels,
        real.patch_set.patients,
        synthetic_features=features["synthetic"],
        real_features=features["real"],
    )
    out = Path(options["out_dir"])
    write_memorisation_outputs(out, report, real, syn)
    print(json.dumps(report.summary(), indent=2))
    return 0


def write_memorisation_outputs(
    out: Path, report: Any, real: LoadedPatches, syn: LoadedPatches
) -> None:
    rows = [
        {
            "synthetic": syn.patch_set.records[i].path,
            "nearest_real": real.patch_set.records[m.real_index].path,
            "ncc": m.ncc,
            "flip": m.flip,
            "shift_x": m.shift[0],
            "shift_y": m.shift[1],
            "flagged": i in set(report.flagged),
        }
        for i, m in enumerate(report.synthetic)
    ]
    atomic_write_text(out / "nearest_real.csv", pd.DataFrame(rows).to_csv(index=False))
    atomic_write_text(out / "summary.json", json.dumps(report.summary(), indent=2) + "\n")
    order = np.argsort([-m.ncc for m in report.synthetic])[:12]
    pairs = [
        np.concatenate([syn.pixels[i], real.pixels[report.synthetic[i].real_index]], 1)
        for i in order
    ]
    atomic_write_png(out / "closest_pairs.png", np.concatenate(pairs, 0))
    plot_ncc_histogram(out / "ncc_histogram.png", report)


def plot_ncc_histogram(path: Path, report: Any) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    bins = np.linspace(0, 1, 81).tolist()
    ax.hist(
        [m.ncc for m in report.reference],
        bins,
        alpha=0.6,
        density=True,
        label="real vs nearest other-patient real",
    )
    ax.hist(
        [m.ncc for m in report.synthetic],
        bins,
        alpha=0.6,
        density=True,
        label="synthetic vs nearest real",
    )
    ax.axvline(
        report.threshold, color="red", ls="--", label=f"flag threshold {report.threshold:.3f}"
    )
    ax.set_xlabel("best normalised cross-correlation (flips, shifts <= 4 px)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_savefig(path, fig, dpi=110)
    plt.close(fig)


GAN_COMMANDS = {
    "train": cmd_train,
    "generate": cmd_generate,
    "score": cmd_score,
    "memorisation": cmd_memorisation,
}


def cmd_gan(args: Sequence[str]) -> int:
    if not args or args[0] not in GAN_COMMANDS:
        raise ConfigError(GAN_USAGE)
    torch.set_grad_enabled(True)
    return GAN_COMMANDS[args[0]](args[1:])
