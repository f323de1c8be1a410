"""Table 1 reports from cell results: table1.csv, table1.md and privacy_utility.png.

Mean +- population std over seeds per row and test set. The paper's values (and the difference)
appear only where backbone and test set are the paper's; otherwise the reason is written.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from common.atomic_io import atomic_write_text
from simulations.paper_table1 import paper_values

METRICS = ("auroc", "auprc_malignant", "auprc_benign")


def _load(out_dir: Path, row: str, seed: int) -> dict[str, Any] | None:
    path = out_dir / "cells" / row / f"seed{seed}" / "result.json"
    return json.loads(path.read_text()) if path.is_file() else None


def summarise(out_dir: Path, rows: Sequence[str], seeds: Sequence[int]) -> pd.DataFrame:
    lines = []
    for row in rows:
        results = [r for r in (_load(out_dir, row, s) for s in seeds) if r is not None]
        if not results:
            continue
        first = results[0]
        setting = first["config"]["paper_row"]["setting"]
        epsilon = first["config"]["paper_row"]["epsilon"]
        model = first["config"]["model"]
        weights = "imagenet" if model["weights"] == "imagenet" else Path(model["weights"]).name
        backbone = (model["library"], model["name"], model["weights"])
        spent = [
            r["privacy"]["epsilon_spent"]
            for r in results
            if r["privacy"]["epsilon_spent"] is not None
        ]
        for test_set in first["tests"]:
            line: dict[str, Any] = {
                "row": row,
                "setting": setting,
                "epsilon": epsilon if epsilon is not None else math.inf,
                "test_set": test_set,
                "seeds": len(results),
                "backbone": f"{model['library']}:{model['name']} ({weights})",
                "epsilon_spent": float(np.mean(spent)) if spent else None,
            }
            for metric in METRICS:
                values = [r["tests"][test_set][metric]["value"] for r in results]
                line[f"{metric}_mean"] = float(np.mean(values))
                line[f"{metric}_std"] = float(np.std(values))  # population std, as the paper
            paper, why = paper_values(setting, epsilon, test_set, backbone)
            if paper is not None:
                line.update(
                    paper_auroc=paper[0],
                    paper_auprc_benign=paper[2],
                    diff_auroc=line["auroc_mean"] - paper[0],
                    diff_auprc_benign=line["auprc_benign_mean"] - paper[2],
                )
            line["paper_note"] = why
            lines.append(line)
    return pd.DataFrame(lines)


def _fmt(mean: float, std: float) -> str:
    return f"{mean:.3f} ± {std:.3f}"


def markdown(frame: pd.DataFrame, seeds: Sequence[int], overrides: Sequence[str]) -> str:
    out = [
        "# Table 1 (mammofl)",
        "",
        f"Seeds: {', '.join(map(str, seeds))}. Mean ± population std over seeds.",
        f"Overrides: {' '.join(overrides) if overrides else '(none)'}",
        "",
        "| row | eps | test set | seeds | AUROC | AUPRC (malignant +) | AUPRC (benign +, paper's) "
        "| eps spent | paper AUROC (diff) | paper AUPRC (diff) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    notes = set()
    for _, r in frame.iterrows():
        paper_a = paper_p = "—"
        if "paper_auroc" in r and not pd.isna(r.get("paper_auroc")):
            paper_a = f"{r['paper_auroc']:.3f} ({r['diff_auroc']:+.3f})"
            paper_p = f"{r['paper_auprc_benign']:.3f} ({r['diff_auprc_benign']:+.3f})"
        elif r["paper_note"]:
            notes.add(r["paper_note"])
        spent = (
            "—"
            if r["epsilon_spent"] is None or pd.isna(r["epsilon_spent"])
            else f"{r['epsilon_spent']:.3f}"
        )
        metrics = " | ".join(_fmt(r[f"{m}_mean"], r[f"{m}_std"]) for m in METRICS)
        cells = [r["row"], f"{r['epsilon']:g}", r["test_set"], str(r["seeds"]), metrics]
        cells += [spent, paper_a, paper_p]
        out.append(f"| {' | '.join(cells)} |")
    if notes:
        out += [
            "",
            "Paper values are shown only where backbone and test set are the paper's. Here:",
        ]
        out += [f"- {n}" for n in sorted(notes)]
    return "\n".join(out) + "\n"


def plot(frame: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    finite = frame["epsilon"].replace(math.inf, np.nan).dropna()
    inf_x = (finite.max() * 3) if len(finite) else 100.0
    for (setting, test_set), part in frame.groupby(["setting", "test_set"]):
        part = part.sort_values("epsilon")
        x = part["epsilon"].replace(math.inf, inf_x)
        ax.errorbar(
            x,
            part["auroc_mean"],
            yerr=part["auroc_std"],
            marker="o",
            capsize=3,
            label=f"{setting} · {test_set}",
        )
    ax.set_xscale("log")
    ticks = sorted(set(finite.tolist())) + ([inf_x] if (frame["epsilon"] == math.inf).any() else [])
    ax.set_xticks(ticks, [f"{t:g}" if t != inf_x else "no DP" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("epsilon")
    ax.set_ylabel("AUROC")
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.legend(fontsize=7)
    ax.set_title("Privacy-utility (mean ± std over seeds)")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def write_reports(
    out_dir: Path, rows: Sequence[str], seeds: Sequence[int], overrides: Sequence[str]
) -> dict[str, Path]:
    frame = summarise(out_dir, rows, seeds)
    paths = {
        "csv": out_dir / "table1.csv",
        "md": out_dir / "table1.md",
        "plot": out_dir / "privacy_utility.png",
    }
    atomic_write_text(paths["csv"], frame.to_csv(index=False))
    atomic_write_text(paths["md"], markdown(frame, seeds, overrides))
    plot(frame, paths["plot"])
    return paths
