"""Per-round plots: each site's epsilon against its budget, and central AUROC."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _figure() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt: Any, fig: Any, path: Path) -> None:
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def plot_epsilon(path: Path, sites: dict[str, Any]) -> None:
    plt = _figure()
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for k, (name, site) in enumerate(sites.items()):
        color = f"C{k}"
        rounds = list(range(1, len(site["epsilon_after_round"]) + 1))
        ax.plot(rounds, site["epsilon_after_round"], "o-", color=color, label=name)
        ax.axhline(site["budget"], color=color, ls="--", lw=0.8)
    ax.set_xlabel("round")
    ax.set_ylabel("epsilon spent (whole ledger)")
    ax.set_title("per-site privacy ledger (dashed: budget)")
    ax.legend(fontsize=7)
    _save(plt, fig, path)


def plot_auroc(path: Path, history: dict[str, Any]) -> None:
    plt = _figure()
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    rounds = history["rounds"]
    initial = history.get("initial", {}).get("central", {})
    tests = sorted({t for r in rounds for t in r["central"]} | set(initial))
    for k, test in enumerate(tests):
        xs = ([0] if test in initial else []) + [r["round"] for r in rounds]
        ys = ([initial[test]["auroc"]] if test in initial else []) + [
            r["central"][test]["auroc"] for r in rounds
        ]
        ax.plot(xs, ys, "o-", color=f"C{k}", label=f"central: {test}")
    ax.axhline(0.5, color="grey", lw=0.6)
    ax.set_xlabel("round (0: before DP rounds)")
    ax.set_ylabel("AUROC")
    ax.legend(fontsize=7)
    _save(plt, fig, path)
