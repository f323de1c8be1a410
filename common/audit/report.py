"""What an audit writes: per-target score files, audit.json, the log-log ROC plot, and the
comparison of several audits (one per model) as a Markdown table and one plot.

All files are written atomically. audit.json holds figures and settings only: no record paths,
no manifest hashes, no per-record scores (those stay in `targets/*.npz` beside it, at the site).
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from common.atomic_io import atomic_write, atomic_write_bytes, atomic_write_text
from common.audit.membership import roc
from common.errors import DataError

ATTACK_LABELS = {
    "lira_online": "LiRA online",
    "lira_offline": "LiRA offline",
    "loss": "loss threshold",
}
METRIC_KEYS = ("auc", "tpr_at_0.001_fpr", "tpr_at_0.01_fpr")


def save_target_scores(path: Path, scores: Mapping[str, np.ndarray], members: np.ndarray) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            arrays: dict[str, Any] = {f"score_{k}": v for k, v in scores.items()}
            np.savez(handle, members=members, **arrays)

    atomic_write(path, write)


def load_target_scores(path: Path) -> tuple[dict[str, np.ndarray], np.ndarray]:
    with np.load(path) as data:
        scores = {k[len("score_") :]: data[k] for k in data.files if k.startswith("score_")}
        return scores, data["members"]


def mean_std(values: Sequence[float | None]) -> dict[str, float | None]:
    """Mean, population std (ddof 0, as the Table 1 report) and sample std (ddof 1)."""
    finite = [float(v) for v in values if v is not None and not math.isnan(v)]
    if not finite:
        return {"mean": None, "std": None, "std_ddof1": None, "n": 0}
    array = np.asarray(finite)
    return {
        "mean": float(array.mean()),
        "std": float(array.std()),
        "std_ddof1": float(array.std(ddof=1)) if len(array) > 1 else None,
        "n": len(array),
    }


def summarise_targets(targets: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean and std over targets (seeds) of every attack metric and of the epsilon figures."""
    attacks = targets[0]["attacks"]
    return {
        "attacks": {
            name: {key: mean_std([t["attacks"][name][key] for t in targets]) for key in METRIC_KEYS}
            for name in attacks
        },
        "empirical_epsilon_lower_bound": mean_std(
            [t["one_run_audit"]["epsilon_lower_bound"] for t in targets]
        ),
        "epsilon_ceiling": mean_std([t["one_run_audit"]["epsilon_ceiling"] for t in targets]),
        "accounted_epsilon": mean_std([t["accounted_epsilon"] for t in targets]),
        "test_auroc": {
            name: mean_std([t["test_auroc"][name] for t in targets])
            for name in targets[0]["test_auroc"]
        },
    }


def _finite(value: Any) -> Any:
    """JSON has no inf/NaN: an infinite bound is written as the string 'inf', NaN as null."""
    if isinstance(value, Mapping):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if math.isnan(value):
            return None
        return value if math.isfinite(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def write_audit_json(path: Path, record: Mapping[str, Any]) -> None:
    atomic_write_text(path, json.dumps(_finite(record), indent=2, allow_nan=False) + "\n")


def _log_axes(axis: Any, non_members: int) -> None:
    low = 0.5 / max(non_members, 1)
    axis.plot([low, 1], [low, 1], color="0.6", lw=0.8, ls=":", label="chance")
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlim(low, 1)
    axis.set_ylim(low, 1.05)
    axis.set_xlabel("false positive rate")
    axis.grid(True, which="major", lw=0.3)


def plot_rocs(
    path: Path,
    curves: Mapping[str, Sequence[tuple[str, dict[str, np.ndarray], np.ndarray]]],
    title: str,
) -> None:
    """One log-log ROC panel per attack; `curves[group]` lists (label, scores per attack,
    members) and each group gets one colour (e.g. a model, its seeds as lines)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    attacks = [a for a in ATTACK_LABELS if any(a in s for g in curves.values() for _, s, _ in g)]
    figure, axes = plt.subplots(1, len(attacks), figsize=(4.2 * len(attacks), 4.0), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    non_members = 1
    for panel, attack in zip(axes[0], attacks, strict=True):
        for index, (group, entries) in enumerate(curves.items()):
            for number, (label, scores, members) in enumerate(entries):
                fpr, tpr = roc(scores[attack], members)
                non_members = max(non_members, int((~members.astype(bool)).sum()))
                single = len(curves) == 1  # one model: a colour and a legend entry per seed
                panel.plot(
                    fpr,
                    tpr,
                    color=colours[(number if single else index) % len(colours)],
                    lw=1.0,
                    alpha=0.85,
                    label=label if single else (group if number == 0 else None),
                )
        _log_axes(panel, non_members)
        panel.set_title(ATTACK_LABELS[attack])
    axes[0][0].set_ylabel("true positive rate")
    axes[0][0].legend(fontsize=8, loc="lower right")
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())


def _cell(stats: Mapping[str, Any], digits: int = 3) -> str:
    if stats.get("mean") is None:
        return "—"
    return f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}"


def separation(better: Mapping[str, Any], worse: Mapping[str, Any]) -> dict[str, Any]:
    """Difference of means in pooled sample standard deviations (ddof 1)."""
    if better["std_ddof1"] is None or worse["std_ddof1"] is None:
        return {"difference": None, "pooled_std": None, "in_pooled_std": None}
    pooled = math.sqrt((better["std_ddof1"] ** 2 + worse["std_ddof1"] ** 2) / 2)
    difference = better["mean"] - worse["mean"]
    ratio = difference / pooled if pooled > 0 else (math.inf if difference > 0 else 0.0)
    return {"difference": difference, "pooled_std": pooled, "in_pooled_std": ratio}


def _model_label(audit: Mapping[str, Any]) -> str:
    target = audit["privacy"]["target_epsilon"]
    return f"{audit['name']} ({'no DP' if target is None else f'DP, eps {target:g}'})"


def compare_audits(folders: Sequence[Path], out_dir: Path) -> dict[str, Any]:
    """`summary.md` and `roc.png` over several audit folders (first = the reference model,
    usually the non-DP one): the figures table and how far the reference's TPR at 1 % FPR lies
    above each other model's, in pooled standard deviations."""
    audits = []
    for folder in folders:
        path = folder / "audit.json"
        if not path.is_file():
            raise DataError(f"{path} is missing: run mammofl audit ... out_dir={folder} first")
        audits.append(json.loads(path.read_text()))
    lines = [
        "| model | attack | AUC | TPR@0.1% FPR | TPR@1% FPR | eps lower bound | bound ceiling |"
        " accounted eps | test AUROC |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for audit in audits:
        summary = audit["summary"]
        bound, accounted = summary["empirical_epsilon_lower_bound"], summary["accounted_epsilon"]
        utility = ", ".join(_cell(s) for s in summary["test_auroc"].values()) or "—"
        for attack, stats in summary["attacks"].items():
            lines.append(
                f"| {audit['name']} | {ATTACK_LABELS[attack]} | {_cell(stats['auc'])} | "
                f"{_cell(stats['tpr_at_0.001_fpr'])} | {_cell(stats['tpr_at_0.01_fpr'])} | "
                f"{_cell(bound, 2)} | {_cell(summary['epsilon_ceiling'], 2)} | "
                f"{_cell(accounted, 2) if accounted['n'] else 'none (no DP)'} | {utility} |"
            )
    reference = audits[0]["summary"]["attacks"]
    gaps = {
        audit["name"]: {
            attack: separation(reference[attack]["tpr_at_0.01_fpr"], stats["tpr_at_0.01_fpr"])
            for attack, stats in audit["summary"]["attacks"].items()
        }
        for audit in audits[1:]
    }
    atomic_write_text(out_dir / "summary.md", "\n".join(lines) + "\n")
    atomic_write_text(out_dir / "separation.json", json.dumps(gaps, indent=2) + "\n")
    curves = {
        _model_label(audit): [
            (f"seed {t['seed']}", *load_target_scores(folder / "targets" / f"seed{t['seed']}.npz"))
            for t in audit["targets"]
        ]
        for folder, audit in zip(folders, audits, strict=True)
    }
    plot_rocs(out_dir / "roc.png", curves, "membership inference, one line per target seed")
    return {"table": lines, "separation_tpr_at_1pct_fpr": gaps}
