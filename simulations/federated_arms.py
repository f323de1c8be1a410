"""The "site alone with DP" arm: one site's runtime in-process, the same DP rounds, budget,
starting model and central test set as the federation, and no other site: with SynPre on, the
site pretrains on its own synthetic patches only (what a hospital could do with mammofl by
itself), reusing the MCGAN it trained in the main run (its own model of its own data)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.config.federated_schema import FederatedRunConfig, SiteEntry
from common.eval.central import CentralEvaluator
from common.eval.records import write_json
from common.federated.model import initial_model
from common.site.facts import facts_from_entry
from common.site.runtime import SiteRuntime
from common.training.engine import load_trainable, trainable_state
from common.training.settings import resolve_device
from server.pretrain import pool_synthetic, pretrain

log = logging.getLogger("mammofl.federate")


def run_site_alone(
    config: FederatedRunConfig, entry: SiteEntry, run_dir: Path, main_state: Path | None = None
) -> dict[str, Any]:
    """Writes run_dir/metrics.json (central metrics per round) and run_dir/ledger.json.

    `main_state`: the site's state dir in the main run, whose MCGAN checkpoints are reused
    (the arm's own ledger is charged for the GAN again, as if it had trained it)."""
    device = resolve_device(config.train.device)
    runtime = SiteRuntime(facts_from_entry(entry, config, run_dir / "state"), config)
    runtime.initialize()
    model = initial_model(config, device)
    synpre = None
    if config.synpre.enabled and config.gan.enabled:
        if main_state is not None and (main_state / "gan").is_dir():
            log.info("%s alone: the site's MCGAN, copied from the main run", entry.name)
            shutil.copytree(main_state / "gan", run_dir / "state" / "gan", dirs_exist_ok=True)
        own = runtime.synthesize(config.gan.per_site)
        pool = pool_synthetic({entry.name: (own.pixels, own.labels, own.provenance)})
        synpre = pretrain(model, pool, config, device)
    sha = runtime.set_base_model({k: v.cpu().numpy() for k, v in model.state_dict().items()})
    trainable = {k: v.numpy() for k, v in trainable_state(model).items()}
    evaluator = CentralEvaluator(
        config.tests,
        config.site_data.image_size,
        device,
        run_dir / "features",
        config.train.feature_batch_size,
    )
    rounds = []
    for round_number in range(1, config.federation.rounds + 1):
        result = runtime.train_round(round_number, trainable, sha)
        trainable = result.trainable
        load_trainable(model, {k: torch.as_tensor(np.asarray(v)) for k, v in trainable.items()})
        rounds.append(
            {
                "round": round_number,
                "central": evaluator.point_values(model),
                "epsilon": result.epsilon,
            }
        )
    final = evaluator.evaluate(model, bootstrap=config.eval.bootstrap, seed=config.seed)
    record = {"site": entry.name, "synpre": synpre, "rounds": rounds, "final": final}
    write_json(run_dir / "metrics.json", record)
    write_json(run_dir / "ledger.json", runtime.status())
    runtime.finalize()
    return record
