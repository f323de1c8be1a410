"""The comparison table of `mammofl federate`: the reason a consortium would federate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from common.config.federated_schema import FederatedRunConfig

ARM_NAMES = {"no_synpre": "federated: DP rounds, no SynPre"}


def _arm_figures(path: Path) -> tuple[dict[str, Any], list[float], int]:
    """(final central metrics with CIs, epsilon spent per site, rounds run) of one arm's run
    dir."""
    metrics = json.loads((path / "metrics.json").read_text())
    rounds = len(metrics["rounds"])
    if (path / "result.json").is_file():  # a Flower arm
        result = json.loads((path / "result.json").read_text())
        return result["tests"], list(result["privacy"]["epsilon_spent"].values()), rounds
    ledger = json.loads((path / "ledger.json").read_text())  # a site-alone arm
    return metrics["final"], [ledger["epsilon"]], rounds


def comparison_table(
    config: FederatedRunConfig, arms: dict[str, Path], timings: dict[str, float]
) -> str:
    tests = list(config.tests)
    header = " | ".join(f"{t} AUROC [95 % CI]" for t in tests)
    lines = [
        f"## Same test set, same per-site budget (epsilon {config.privacy.target_epsilon:g}, "
        f"delta {config.privacy.delta:g}, {config.federation.rounds} rounds planned x "
        f"{config.federation.local_epochs} local epochs)",
        "",
        f"| arm | {header} | rounds run | epsilon spent per site |",
        "|---|" + "---|" * len(tests) + "---|---|",
    ]
    for arm, path in arms.items():
        final, spent, rounds = _arm_figures(path)
        own = (
            "own SynPre + DP rounds"
            if config.synpre.enabled and config.gan.enabled
            else "DP rounds"
        )
        name = ARM_NAMES.get(arm, f"{arm.replace('alone_', '')} alone: {own}")
        if arm == "main":
            name = "federated: " + ("SynPre + DP rounds" if config.synpre.enabled else "DP rounds")
        cells = []
        for test in tests:
            auroc = final[test]["auroc"]
            interval = (
                f" [{auroc['ci_low']:.3f}, {auroc['ci_high']:.3f}]" if "ci_low" in auroc else ""
            )
            cells.append(f"{auroc['value']:.3f}{interval}")
        epsilons = ", ".join(f"{e:.2f}" for e in spent)
        lines.append(f"| {name} | {' | '.join(cells)} | {rounds} | {epsilons} |")
    lines += [
        "",
        "Wall time: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
        + f" (total {sum(timings.values()):.0f} s).",
    ]
    return "\n".join(lines) + "\n"
