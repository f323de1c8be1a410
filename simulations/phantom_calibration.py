"""How hard is the default phantom for the demo's model? Pooled non-DP training from scratch.

    .venv/bin/python -m simulations.phantom_calibration [epochs=40] [seeds=0,1,2] [<overrides>]

Pools every phantom site's training patients (no privacy: a yardstick, not a product), trains
`model` (all parameters, from scratch, flips) and scores the central phantom test set. The
federated issue asks for AUROC around 0.8-0.95: a model that neither saturates nor fails.
"""

from __future__ import annotations

import numpy as np
import torch

from common.config.compose import compose_federated_config
from common.config.option_values import seed_numbers, whole_number
from common.data.images import LoadedPatches
from common.data.patch_set import PatchSet
from common.eval.central import CentralEvaluator
from common.federated.model import initial_model
from common.models.policies import apply_trainable_policy
from common.privacy.ledger import PrivacyLedger
from common.site.data import load_site_data
from common.site.facts import simulated_site
from common.training.fit import fit
from common.training.settings import EngineSettings, resolve_device
from simulations.federated_workspace import prepare_workspace


def main(args: list[str]) -> int:
    options = dict(a.split("=", 1) for a in args if a.split("=", 1)[0] in ("epochs", "seeds"))
    overrides = [a for a in args if a.split("=", 1)[0] not in ("epochs", "seeds")]
    overrides = overrides or ["out_dir=runs/phantom_calibration"]
    epochs = whole_number("epochs", options.get("epochs", 40), minimum=1)
    seeds = seed_numbers("seeds", options.get("seeds", "0,1,2"))
    config = compose_federated_config(overrides)
    prepare_workspace(config)
    sites = [
        load_site_data(simulated_site(config, k), config.site_data)
        for k in range(len(config.sites))
    ]
    pooled = LoadedPatches(
        PatchSet([r for s in sites for r in s.train.patch_set.records], name="pooled"),
        np.concatenate([s.train.pixels for s in sites]),
    )
    device = resolve_device(config.train.device)
    evaluator = CentralEvaluator(config.tests, config.site_data.image_size, device)
    results = []
    for seed in seeds:
        config.seed = seed
        model = initial_model(config, device)
        apply_trainable_policy(model, "all")
        settings = EngineSettings(
            batch_size=config.synpre.batch_size,
            lr=config.synpre.lr,
            weight_decay=config.synpre.weight_decay,
            label_smoothing=config.train.label_smoothing,
            flips=True,
            seed=seed,
            device=device,
            backbone_train_mode=True,
            feature_batch_size=config.train.feature_batch_size,
        )
        fit(
            model,
            "naive",
            pooled,
            None,
            settings,
            epochs=epochs,
            ledger=PrivacyLedger(),
            selection="last",
        )
        metrics = evaluator.evaluate(model)
        results.append({name: m["auroc"]["value"] for name, m in metrics.items()})
        print(f"seed {seed}: " + ", ".join(f"{k} AUROC {v:.3f}" for k, v in results[-1].items()))
    for name in results[0]:
        values = np.array([r[name] for r in results])
        print(
            f"{config.model.name} from scratch, {len(pooled.pixels)} pooled training patches, "
            f"{epochs} epochs, no DP: {name} AUROC {values.mean():.3f} +- {values.std():.3f} "
            f"(seeds {seeds})"
        )
    torch.set_num_threads(torch.get_num_threads())
    return 0


if __name__ == "__main__":
    from simulations.cli import script_main

    script_main("phantom_calibration", main)
