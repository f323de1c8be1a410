"""Table 1 reports from cell results: table1.csv, table1.md and privacy_utility.png.

Mean +- population std over seeds per row and test set. The paper's values (and the difference)
appear only where backbone and test set are the paper's; otherwise the reason is written. Each
row says whether a formal guarantee covers it (`guarantee`): a DP row whose synthetic data or
starting weights come from a GAN trained without DP prints the preset's epsilon, but that
epsilon does not cover them; the plot draws such rows with open markers.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from common.atomic_io import atomic_savefig, atomic_write_text
from simulations.paper_table1 import paper_values

METRICS = ("auroc", "auprc_malignant", "auprc_benign")


def _load(out_dir: Path, row: str, seed: int) -> dict[str, Any] | None:
    path = out_dir / "cells" / row / f"seed{seed}" / "result.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _test_sizes(out_dir: Path, row: str, seeds: Sequence[int]) -> dict[str, int]:
    """Each test set's patch count from the row's first site_only.json (the report stays on
    the researcher's machine); a set no cell kept a count for is absent."""
    for seed in seeds:
        path = out_dir / "cells" / row / f"seed{seed}" / "site_only.json"
        if path.is_file():
            tests = json.loads(path.read_text()).get("tests", {})
            return {name: int(t["n"]) for name, t in tests.items() if t.get("n") is not None}
    return {}


def summarise(
    out_dir: Path,
    rows: Sequence[str],
    seeds: Sequence[int],
    cpu_variant_rows: Collection[str] = (),
) -> pd.DataFrame:
    """One line per row and test set; `cpu_variant_rows` (SynPre's CPU variant and the rows
    fine-tuned from it) form their own "cpu variant" curves, apart from the paper's."""
    lines = []
    for row in rows:
        results = [r for r in (_load(out_dir, row, s) for s in seeds) if r is not None]
        if not results:
            continue
        first = results[0]
        config = first["config"]
        # a recipe row names no paper row: its data, start and target say what it is
        setting = config["paper_row"]["setting"] or (
            "Real+Syn"
            if "synthetic" in config.get("data", {}).get("train_on", [])
            else "SynHead+RealFT"  # fine-tunes a head pretrained on synthetic patches
            if config.get("start_from_row")
            else "Real"
        )
        epsilon = config["paper_row"]["epsilon"]
        if epsilon is None:
            epsilon = config.get("privacy", {}).get("target_epsilon")
        model = first["config"]["model"]
        weights = "imagenet" if model["weights"] == "imagenet" else Path(model["weights"]).name
        backbone = (model["library"], model["name"], model["weights"])
        spent = [
            r["privacy"]["epsilon_spent"]
            for r in results
            if r["privacy"]["epsilon_spent"] is not None
        ]
        guarantee = _guarantee(results)
        variant = _variant(config)
        sizes = _test_sizes(out_dir, row, seeds)
        for test_set in first["tests"]:
            line: dict[str, Any] = {
                "row": row,
                "setting": setting,
                # paper rows, CPU variants and recipes of one setting are separate curves
                "settings": _settings(row, cpu_variant_rows),
                "epsilon": epsilon if epsilon is not None else math.inf,
                "test_set": test_set,
                "seeds": len(results),
                "backbone": f"{model['library']}:{model['name']} ({weights})",
                "epsilon_spent": float(np.mean(spent)) if spent else None,
                "unit": first["privacy"].get("unit", "patch") if spent else None,
                "variant": variant,
                **guarantee,
            }
            for metric in METRICS:
                values = [
                    np.nan if (value := r["tests"][test_set][metric]["value"]) is None else value
                    for r in results
                ]  # a one-class test set has no AUROC (NaN, written as null)
                line[f"{metric}_mean"] = float(np.mean(values))
                line[f"{metric}_std"] = float(np.std(values))  # population std, as the paper
            paper, why = paper_values(setting, epsilon, test_set, backbone, sizes.get(test_set))
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


def _settings(row: str, cpu_variant_rows: Collection[str]) -> str:
    if row.startswith("recipe/"):
        return "recipe"
    return "cpu variant" if row in cpu_variant_rows else "paper"


def _variant(config: dict[str, Any]) -> str:
    """How a paper row was run differently from the paper, in words ('' when it was not)."""
    model, train = config["model"], config.get("train", {})
    if model.get("trainable") == "last_stage":
        lr = f"{train['lr']:.0e}".replace("e-0", "e-")
        return (
            f"CPU variant: the backbone's last stage and the head trained on cached trunk maps, "
            f"{train['epochs']} epochs, lr {lr} (the paper's SynPre trains all parameters for "
            "300 epochs at lr 1e-5)"
        )
    return ""


def _guarantee(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The row's guarantee: 'formal' only if every seed's cell has one; else why not."""
    privacy = [r["privacy"] for r in results]
    if not any(p["enabled"] for p in privacy):
        return {"guarantee": "none (no DP)", "guarantee_note": "", "noise": "", "tuning_note": ""}
    notes = sorted({p.get("note", "") for p in privacy if p.get("note")})
    noise = sorted({p.get("noise") or "" for p in privacy})
    tuning = sorted({p.get("tuning_note", "") for p in privacy if p.get("tuning_note")})
    formal = all(p.get("formal_guarantee") for p in privacy)
    seeded = [n for n in noise if n != "os-entropy"]
    label = "formal" if formal and not seeded else ("seeded noise" if formal else "partial")
    return {
        "guarantee": label,
        "guarantee_note": "; ".join(notes),
        "noise": "; ".join(noise),
        "tuning_note": "; ".join(tuning),
    }


def _fmt(mean: float, std: float, seeds: int) -> str:
    """Mean ± population std over seeds; one seed has no spread to show."""
    return f"{mean:.3f} ± {std:.3f}" if seeds > 1 else f"{mean:.3f} (1 seed)"


def markdown(
    frame: pd.DataFrame,
    seeds: Sequence[int],
    overrides: Sequence[str],
    notes_about_rows: Sequence[str] = (),
) -> str:
    out = [
        "# Table 1 (mammofl)",
        "",
        f"Seeds: {', '.join(map(str, seeds))}. Mean ± population std over seeds.",
        f"Overrides: {' '.join(overrides) if overrides else '(none)'}",
        "",
        "| row | eps | test set | seeds | AUROC | AUPRC (malignant +) | AUPRC (benign +, paper's) "
        "| eps spent | unit | guarantee | paper AUROC (diff) | paper AUPRC (diff) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    notes = set()
    caveats: dict[str, set[str]] = {}
    tuned: dict[str, set[str]] = {}
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
        metrics = " | ".join(_fmt(r[f"{m}_mean"], r[f"{m}_std"], r["seeds"]) for m in METRICS)
        cells = [r["row"], f"{r['epsilon']:g}", r["test_set"], str(r["seeds"]), metrics]
        guarantee = r["guarantee"]
        if r["guarantee"] == "partial":
            guarantee = "partial *"
            caveats.setdefault(r["guarantee_note"], set()).add(r["row"])
        if r["guarantee"] == "seeded noise":
            caveats.setdefault(r["noise"], set()).add(r["row"])
        if isinstance(r.get("tuning_note"), str) and r["tuning_note"]:
            guarantee += " †"
            tuned.setdefault(r["tuning_note"], set()).add(r["row"])
        unit = r["unit"] if isinstance(r["unit"], str) else "—"
        cells += [spent, unit, guarantee, paper_a, paper_p]
        out.append(f"| {' | '.join(cells)} |")
    variants = sorted({(r["row"], r["variant"]) for _, r in frame.iterrows() if r["variant"]})
    if variants or notes_about_rows:
        out += ["", "How rows were run:"]
        out += [f"- {row}: {variant}" for row, variant in variants]
        out += [f"- {note}" for note in notes_about_rows]
    if caveats:
        out += ["", "Rows whose epsilon does not cover everything they learnt from:"]
        out += [f"- {', '.join(sorted(rows))}: {note}" for note, rows in sorted(caveats.items())]
    if tuned:
        out += ["", "† Rows whose hyperparameters were tuned on records:"]
        out += [f"- {', '.join(sorted(rows))}: {note}" for note, rows in sorted(tuned.items())]
    if notes:
        out += [
            "",
            "Paper values are shown only where backbone and test set are the paper's. Here:",
        ]
        out += [f"- {n}" for n in sorted(notes)]
    return "\n".join(out) + "\n"


def open_markers(frame: pd.DataFrame) -> pd.Series:
    """Rows drawn with an open marker: DP rows without a formal guarantee for all they used
    (non-DP synthetic data or start point, or seeded noise); filled: formal, or no DP at all."""
    return ~frame["guarantee"].isin(["formal", "none (no DP)"])


def plot(frame: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    finite = frame["epsilon"].replace(math.inf, np.nan).dropna()
    inf_x = (finite.max() * 3) if len(finite) else 100.0
    for (setting, settings, test_set), part in frame.groupby(["setting", "settings", "test_set"]):
        part = part.sort_values("epsilon")
        x = part["epsilon"].replace(math.inf, inf_x)
        line = ax.errorbar(
            x,
            part["auroc_mean"],
            yerr=part["auroc_std"],
            capsize=3,
            label=f"{setting} ({settings} settings) · {test_set}",
        )
        colour = line.lines[0].get_color()
        partial = open_markers(part)
        ax.scatter(x[~partial], part["auroc_mean"][~partial], color=colour, zorder=3)
        ax.scatter(
            x[partial], part["auroc_mean"][partial], facecolors="white", edgecolors=colour, zorder=3
        )
    ax.set_xscale("log")
    ticks = sorted(set(finite.tolist())) + ([inf_x] if (frame["epsilon"] == math.inf).any() else [])
    ax.set_xticks(ticks, [f"{t:g}" if t != inf_x else "no DP" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("epsilon")
    ax.set_ylabel("AUROC")
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.legend(fontsize=7)
    ax.set_title(
        "Privacy-utility (mean ± std)\nopen marker: no formal guarantee for all of it", fontsize=10
    )
    fig.tight_layout()
    atomic_savefig(path, fig, dpi=120)
    plt.close(fig)


def plot_selection_curves(
    out_dir: Path, rows: Sequence[str], seeds: Sequence[int], path: Path
) -> bool:
    """Per-epoch selection-set (hold-out) AUPRC and loss of the rows whose whole backbone or
    last stage trains (SynPre and its CPU variant), one line per seed: whether the epoch count
    let them converge. Returns False (no file) when no such row has results."""
    curves: dict[tuple[str, int], dict[str, Any]] = {}
    for row in rows:
        for seed in seeds:
            record = _load(out_dir, row, seed)
            if record and record["config"]["model"].get("trainable") in ("last_stage", "all"):
                curves[(row, seed)] = record
    if not curves:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6.4, 5.6), sharex=True)
    for (row, seed), record in curves.items():
        history = record["history"]
        epochs = [h["epoch"] for h in history]
        line = top.plot(epochs, [h["val_auprc"] for h in history], label=f"{row} seed {seed}")
        bottom.plot(epochs, [h["val_loss"] for h in history], color=line[0].get_color())
        chosen = [h for h in history if h["epoch"] == record["best_epoch"]]
        top.scatter(
            [h["epoch"] for h in chosen],
            [h["val_auprc"] for h in chosen],
            color=line[0].get_color(),
        )
    top.set_ylabel("selection AUPRC")
    bottom.set_ylabel("selection loss")
    bottom.set_xlabel("epoch")
    top.legend(fontsize=7)
    top.set_title("Selection-set curves of the SynPre rows (dot: the selected epoch)", fontsize=10)
    fig.tight_layout()
    atomic_savefig(path, fig, dpi=120)
    plt.close(fig)
    return True


def write_reports(
    out_dir: Path,
    rows: Sequence[str],
    seeds: Sequence[int],
    overrides: Sequence[str],
    notes_about_rows: Sequence[str] = (),
    cpu_variant_rows: Collection[str] = (),
) -> dict[str, Path]:
    frame = summarise(out_dir, rows, seeds, cpu_variant_rows)
    paths = {
        "csv": out_dir / "table1.csv",
        "md": out_dir / "table1.md",
        "plot": out_dir / "privacy_utility.png",
    }
    atomic_write_text(paths["csv"], frame.to_csv(index=False))
    atomic_write_text(paths["md"], markdown(frame, seeds, overrides, notes_about_rows))
    plot(frame, paths["plot"])
    curves = out_dir / "synpre_selection_curves.png"
    if plot_selection_curves(out_dir, rows, seeds, curves):
        paths["synpre_curves"] = curves
    else:
        curves.unlink(missing_ok=True)  # never a stale plot of an earlier run
    return paths
