"""Write MCGAN samples as a mammofl patch set (`source=synthetic`) with their provenance.

No real patient id or path appears: each patch is its own pseudo-patient named after the
checkpoint hash. The provenance (checkpoint hash, epoch, DP or not, epsilon) is in every row and
in `provenance.json`; without DP the record says that no formal guarantee covers the data.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from common.atomic_io import atomic_write_png, atomic_write_text
from common.config.gan_schema import GanConfig
from common.data.patch_set import PatchRecord, PatchSet, write_manifest
from common.errors import ConfigError
from common.models.mcgan import Generator
from common.runs.provenance import file_sha256
from common.training.gan_augment import to_uint8
from common.training.gan_trainer import shape_of


def load_generator(checkpoint: Path) -> tuple[Generator, dict[str, Any]]:
    from omegaconf import OmegaConf

    if not checkpoint.is_file():
        raise ConfigError(f"checkpoint {checkpoint} not found (see DIR/checkpoints/epoch_*.pt)")
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        config = OmegaConf.to_object(
            OmegaConf.merge(OmegaConf.structured(GanConfig), state["config"])
        )
        assert isinstance(config, GanConfig)
        generator = Generator(shape_of(config))
        generator.load_state_dict(state["generator"])
    except Exception as error:  # not a file torch reads, or no MCGAN checkpoint inside
        raise ConfigError(
            f"{checkpoint} is not an MCGAN checkpoint of this mammofl ({type(error).__name__}: "
            f"{error}); give DIR/checkpoints/epoch_*.pt of a `mammofl gan train` run"
        ) from error
    return generator.eval(), state


def provenance_of(checkpoint: Path, state: dict[str, Any]) -> dict[str, Any]:
    from common.privacy.ledger import PrivacyLedger

    ledger = state.get("ledger")
    at_checkpoint = PrivacyLedger.from_state_dict(ledger).epsilon() if ledger else None
    epsilon, run_ledger = at_checkpoint, ledger
    if ledger:
        # every checkpoint and sample grid of the run may have been looked at (the epoch is
        # picked by eye): the run's spend is that of its latest checkpoint, not the chosen one
        latest = sorted(checkpoint.parent.glob("epoch_*.pt"))[-1]
        run_ledger = torch.load(latest, map_location="cpu", weights_only=False)["ledger"]
        epsilon = max(at_checkpoint or 0.0, PrivacyLedger.from_state_dict(run_ledger).epsilon())
    return {
        "generator": "mcgan",
        "checkpoint_sha256": file_sha256(checkpoint),
        "epoch": int(state["epoch"]),
        "dp": ledger is not None,
        "epsilon": epsilon,
        "epsilon_at_checkpoint": at_checkpoint,
        "delta": ledger["delta"] if ledger else None,
        "ledger": run_ledger,
        "site": state["config"].get("site", ""),
        "formal_guarantee": ledger is not None,
        "note": "" if ledger else "GAN trained without DP: no formal privacy guarantee",
    }


@torch.no_grad()
def generate_patch_set(
    checkpoint: Path,
    out_dir: Path,
    counts: dict[int, int],
    seed: int = 0,
    batch_size: int = 64,
    replace: bool = False,
) -> PatchSet:
    """`counts`: {label: how many} (1 = malignant). Writes PNGs, manifest.csv, provenance.json.
    `replace`: remove a set already in out_dir (its images and manifest) once the checkpoint
    has loaded, not before (a mistyped checkpoint must not cost the old set)."""
    generator, state = load_generator(checkpoint)
    if replace:
        shutil.rmtree(out_dir / "images", ignore_errors=True)  # none of the old set is kept
        (out_dir / "manifest.csv").unlink(missing_ok=True)
    provenance = provenance_of(checkpoint, state)
    tag = provenance["checkpoint_sha256"][:12]
    rng = torch.Generator().manual_seed(seed)
    labels = [label for label, n in sorted(counts.items(), reverse=True) for _ in range(n)]
    records = []
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    for start in range(0, len(labels), batch_size):
        chunk = torch.tensor(labels[start : start + batch_size])
        z = torch.randn(len(chunk), generator.shape.latent_dim, generator=rng)
        for offset, image in enumerate(to_uint8(generator(z, chunk))):
            index = start + offset
            name = f"mcgan_{tag}_{index:06d}_{'malignant' if chunk[offset] else 'benign'}.png"
            atomic_write_png(out_dir / "images" / name, image)
            records.append(
                PatchRecord(
                    path=str((out_dir / "images" / name).resolve()),
                    label=int(chunk[offset]),
                    patient_id=f"synthetic:{tag}:{index}",
                    site=provenance["site"],
                    source="synthetic",
                    provenance_file=f"mcgan:{tag}:epoch{provenance['epoch']}:dp={provenance['dp']}"
                    f":eps={provenance['epsilon']}",
                )
            )
    patch_set = PatchSet(records, name=str(out_dir))
    atomic_write_text(
        out_dir / "provenance.json",
        json.dumps(
            {**provenance, "seed": seed, "counts": {str(k): v for k, v in counts.items()}}, indent=2
        )
        + "\n",
    )
    write_manifest(patch_set, out_dir)
    return patch_set
