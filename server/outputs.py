"""What a federated run leaves in its run dir: metrics.json, ledger.json, result.json,
summary.md, epsilon_per_round.png, auroc_per_round.png and model.pt (loadable by
`mammofl evaluate run_dir=...`)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from common.atomic_io import atomic_write_text
from common.config.federated_schema import FederatedRunConfig
from common.config.schema import DataConfig, MammoflConfig, PrivacyConfig
from common.eval.central import CentralEvaluator
from common.eval.metrics import MIN_RELEASED_CLASS_COUNT
from common.eval.records import save_model, write_json
from common.models.classifier import Classifier
from common.privacy.randomness import SEEDED_NOISE_NOTE
from common.runs.provenance import git_commit, package_versions
from server.checkpoint import ServerState
from server.ledgers import MirroredLedgers
from server.plots import plot_auroc, plot_epsilon

REVEALS = (
    "The server sees, per site and round, (noise multiplier, sample rate, steps). With "
    "q = 1/ceil(N/B) these reveal ceil(N/B), i.e. the site's number of training patches to "
    "within one batch B; the trainable weights each round (no secure aggregation); and the "
    "sites' local validation AUROC/AUPRC, which DP does not cover (none from a site whose "
    f"validation set has fewer than {MIN_RELEASED_CLASS_COUNT} patches of a class, unless it "
    "consents)."
)


def evaluate_compatible_config(config: FederatedRunConfig) -> dict[str, Any]:
    """The single-node config form `mammofl evaluate` reads (model, image size, eval)."""
    model = dataclasses.replace(config.model, weights="none", init_from=None)
    single = MammoflConfig(
        data=DataConfig(image_size=config.site_data.image_size),
        model=model,
        train=config.train,
        privacy=PrivacyConfig(
            enabled=True,
            target_epsilon=config.privacy.target_epsilon,
            delta=config.privacy.delta,
            max_grad_norm=config.privacy.max_grad_norm,
            accountant=config.privacy.accountant,
        ),
        eval=config.eval,
        name=config.name,
        seed=config.seed,
    )
    return dataclasses.asdict(single)


# an auditor read the preset's caps and consents (`federated_config.sites`) as the hospitals'
DEPLOYED_SITES_NOTE = (
    "deployed run: the sites were the SuperNodes that took part (privacy.budget, ledger.json); "
    "each one's epsilon cap and consents came from its own node config. "
    "federated_config.sites is the preset's table of simulated sites and was not used"
)


def write_outputs(
    run_dir: Path,
    config: FederatedRunConfig,
    state: ServerState,
    model: Classifier,
    evaluator: CentralEvaluator,
    mirror: MirroredLedgers,
    started: float,
    client_level: dict[str, Any] | None = None,
    *,
    deployed: bool = False,
) -> dict[str, Any]:
    """`client_level`: the client-level DP report (a whole site as the unit), beside each
    site's sample-level ledger, when `federation.client_dp` is on. `deployed`: the sites were
    SuperNodes, so the preset's site table was not theirs (`sites_note` says so)."""
    final = evaluator.evaluate(model, bootstrap=config.eval.bootstrap, seed=config.seed)
    sites = mirror.report()
    noise = SEEDED_NOISE_NOTE if config.seeded_noise else "os-entropy"
    ledgers: dict[str, Any] = {
        "sites": sites,
        "unit": config.privacy.unit,
        "noise": noise,
        "what_the_server_sees": REVEALS,
    }
    if client_level is not None:
        ledgers["client_level"] = client_level
    write_json(run_dir / "metrics.json", state.history)
    write_json(run_dir / "ledger.json", ledgers)
    save_model(run_dir / "model.pt", {k: v.detach().cpu() for k, v in model.state_dict().items()})
    record = {
        "name": config.name,
        "config": evaluate_compatible_config(config),
        "federated_config": dataclasses.asdict(config),
        "rounds_completed": state.round,
        "rounds_planned": config.federation.rounds,
        "stopped_after_round": config.federation.stop_after_round
        if state.round < config.federation.rounds and not state.ended
        else None,
        "ended_early": state.ended or None,
        "tests": final,
        "privacy": {
            "unit": config.privacy.unit,
            "noise": noise,
            "budget": {s: v["budget"] for s, v in sites.items()},  # the run's or a site's cap
            "delta": config.privacy.delta,
            "epsilon_spent": {s: v["epsilon"] for s, v in sites.items()},
            "synthetic_guarantee": {s: v["synthetic_guarantee"] for s, v in sites.items()},
            "client_level": None
            if client_level is None
            else {k: client_level[k] for k in ("unit", "epsilon", "delta", "noise_multiplier")},
        },
        "sites_note": DEPLOYED_SITES_NOTE if deployed else None,
        "versions": package_versions(),
        "git_commit": git_commit(),
        "seconds": round(time.time() - started, 1),
    }
    write_json(run_dir / "result.json", record)
    summary = summary_table(config, state, sites, final)
    atomic_write_text(run_dir / "summary.md", summary)
    plot_epsilon(run_dir / "epsilon_per_round.png", sites)
    plot_auroc(run_dir / "auroc_per_round.png", state.history)
    return record


def summary_table(
    config: FederatedRunConfig,
    state: ServerState,
    sites: dict[str, Any],
    final: dict[str, Any],
) -> str:
    lines = [
        f"# {config.name}: {state.round} of {config.federation.rounds} rounds",
        "",
        "| site | budget | epsilon spent (all DP) | DP-SGD | synthetic data | excluded |",
        "|---|---|---|---|---|---|",
    ]
    for name, site in sites.items():
        lines.append(
            f"| {name} | {site['budget']:g} | {site['epsilon']:.3f} | "
            f"{site['epsilon_dp_sgd']:.3f} | {site['synthetic_guarantee']} | "
            f"{site['excluded'] or ''} |"
        )
    lines += [
        "",
        "| test set | AUROC [95 % CI] | AUPRC malignant | AUPRC benign |",
        "|---|---|---|---|",
    ]
    for name, metrics in final.items():
        auroc = metrics["auroc"]
        interval = f" [{auroc['ci_low']:.3f}, {auroc['ci_high']:.3f}]" if "ci_low" in auroc else ""
        lines.append(
            f"| {name} | {auroc['value']:.3f}{interval} | "
            f"{metrics['auprc_malignant']['value']:.3f} | {metrics['auprc_benign']['value']:.3f} |"
        )
    if state.ended:
        lines += ["", f"Ended early: {state.ended}"]
    not_started = state.history.get("not_started", {})
    if not_started:
        lines += ["", "Could not start (no round sent):"]
        lines += [f"- {node}: {why}" for node, why in not_started.items()]
    return "\n".join(lines) + "\n"
