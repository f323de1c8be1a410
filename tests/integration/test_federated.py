"""The federated simulation for real (Flower simulation runtime, Ray backend) on the tiny preset:
every output, the per-round budget, resume, and a run extended beyond the sites' plans."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from common.federated.timing import read_run_timings
from simulations.evaluate import evaluate_run
from simulations.federate import run_federate

TINY = "experiment=federated/tiny"


def _federate(workspace: Path, run_dir: Path, *overrides: str) -> dict[str, Any]:
    return run_federate([TINY, f"out_dir={workspace}", f"run_dir={run_dir}", *overrides])


def _read(path: Path) -> Any:
    return json.loads(path.read_text())


def _events(run_dir: Path) -> dict[str, list[dict[str, Any]]]:
    return {name: site["events"] for name, site in _read(run_dir / "ledger.json")["sites"].items()}


@pytest.fixture(scope="module")
def full_run(tiny_workspace: Path) -> Path:
    run_dir = tiny_workspace / "runs" / "full"
    _federate(tiny_workspace, run_dir)
    return run_dir


def test_every_output_and_the_budget_after_every_round(full_run: Path) -> None:
    for name in (
        "metrics.json",
        "ledger.json",
        "result.json",
        "summary.md",
        "model.pt",
        "epsilon_per_round.png",
        "auroc_per_round.png",
    ):
        assert (full_run / name).is_file(), name
    rounds = _read(full_run / "metrics.json")["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3]
    for entry in rounds:
        assert set(entry["central"]["phantom_test"]) == {"auroc", "auprc_malignant", "auprc_benign"}
        assert set(entry["sites"]) == {"site-a", "site-b", "site-c"}
    ledgers = _read(full_run / "ledger.json")
    assert ledgers["unit"] == "patch" and ledgers["noise"] == "os-entropy"
    for site in ledgers["sites"].values():
        assert site["delta"] == 1e-4 and site["unit"] == "patch"
        assert len(site["epsilon_after_round"]) == 3
        assert all(0 < e <= site["budget"] for e in site["epsilon_after_round"])
        assert site["epsilon_after_round"] == sorted(site["epsilon_after_round"])
        assert [e["round"] for e in site["events"]] == [1, 2, 3]
        assert site["synthetic_guarantee"] == "no formal guarantee (MCGAN without DP)"
        assert site["gan_epsilon"] is None
    # one exchange a round: rounds 2 and 3's train messages carry the scores of rounds 1 and 2,
    # and only the last round has an evaluate exchange of its own; the base model travels with
    # round 1 and every reply says what its work charged, so no exchange is bookkeeping only
    _, messages = read_run_timings(full_run)
    for site in ("site-a", "site-b", "site-c"):
        kinds = [m["message"] for m in messages if m["site"] == site]
        assert kinds == ["query.status", "query.synthesize", "train", "train", "train", "evaluate"]
        # ... and the server's mirror still ends equal to the site's own ledger, the use of the
        # validation patients by the scores included
        own = _read(full_run / "sites" / site / "state" / "ledger.json")
        mirrored = ledgers["sites"][site]
        assert mirrored["events"] == own["events"] and own["non_dp_uses"]
        assert mirrored["non_dp_uses"] == own["non_dp_uses"]
    result = _read(full_run / "result.json")
    assert result["rounds_completed"] == 3 and result["git_commit"]
    summary = (full_run / "summary.md").read_text()
    for arm in ("SynPre + DP rounds", "no SynPre", "site-a alone", "site-c alone"):
        assert arm in summary


def test_comparison_arms_keep_their_own_ledgers(full_run: Path) -> None:
    arms = full_run / "arms"
    main = _events(full_run)
    no_synpre = _events(arms / "no_synpre")
    assert set(no_synpre) == set(main)  # the same sites, each charged in its own state dir
    for site in ("site-a", "site-b", "site-c"):
        assert (arms / "no_synpre" / "sites" / site / "state" / "ledger.json").is_file()
        alone = _read(arms / f"alone_{site}" / "ledger.json")
        assert 0 < alone["epsilon"] <= alone["budget"]


def test_final_model_loads_in_mammofl_evaluate(full_run: Path, tiny_workspace: Path) -> None:
    result = _read(full_run / "result.json")
    evaluated = evaluate_run(str(full_run), str(tiny_workspace / "central-test"), name="again")
    assert evaluated["metrics"]["auroc"]["value"] == pytest.approx(
        result["tests"]["phantom_test"]["auroc"]["value"], abs=1e-9
    )


def test_stopped_and_resumed_equals_uninterrupted(
    full_run: Path, tiny_workspace: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run_dir = tiny_workspace / "runs" / "resumed"
    compare = "simulation.compare=[]"
    with caplog.at_level(logging.INFO, logger="mammofl.federate"):
        # the preset's comparison arms: a stopped main arm says they wait for its resume
        arms = _federate(tiny_workspace, run_dir, "federation.stop_after_round=2")["arms"]
    assert list(arms) == ["main"]
    assert (
        "comparison arms (no_synpre, site_alone): not run, the main arm stopped after round 2 "
        "of 3; they run when it is resumed (federation.resume=true)"
    ) in caplog.text
    stopped = _read(run_dir / "result.json")
    assert stopped["rounds_completed"] == 2 and stopped["stopped_after_round"] == 2
    # what a server killed mid-save leaves (atomic_write's temporaries): its own are removed on
    # resume, a file it did not write stays
    server_dir = run_dir / "server"
    killed_saves = [
        server_dir / ".checkpoint.pt.k2x9q0ab.tmp",
        server_dir / ".round_sent.json.7hz_3kq1.tmp",
    ]
    not_its_own = server_dir / ".notes.txt.k2x9q0ab.tmp"
    for path in [*killed_saves, not_its_own]:
        path.write_bytes(b"half a model")
    _federate(tiny_workspace, run_dir, compare, "federation.resume=true")
    assert not any(path.exists() for path in killed_saves) and not_its_own.exists()
    resumed = _read(run_dir / "result.json")
    assert resumed["rounds_completed"] == 3 and resumed["stopped_after_round"] is None
    assert _events(run_dir) == _events(full_run)
    rounds = _read(run_dir / "metrics.json")["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3]
    # round 2 ended the first run, so its own exchange scored it; round 1's came with round 2
    assert all(set(r["sites"]) == {"site-a", "site-b", "site-c"} for r in rounds)

    # asked for a 4th round the sites never planned: they refuse, nothing is charged, and the
    # server ends the run cleanly once too few sites have budget left
    _federate(tiny_workspace, run_dir, compare, "federation.resume=true", "federation.rounds=4")
    extended = _read(run_dir / "result.json")
    assert extended["rounds_completed"] == 3
    # the final model is the last round's, also when the resumed run could add none
    assert extended["tests"] == resumed["tests"]
    assert "budget" in extended["ended_early"]
    assert _events(run_dir) == _events(full_run)
    for site in _read(run_dir / "ledger.json")["sites"].values():
        assert site["epsilon"] <= site["budget"] and site["excluded"]


def test_a_resume_keeps_finished_arms_and_sets_an_interrupted_one_aside(full_run: Path) -> None:
    """Resuming a run whose comparison arms finished keeps them (their ledgers are never
    reset by a rerun); an arm that never finished is renamed, ledgers and all, and run again.
    (Last in this module: it changes the shared run.)"""
    arms = full_run / "arms"
    kept = {p: p.read_bytes() for p in arms.rglob("ledger.json") if "alone_site-c" not in str(p)}
    (arms / "alone_site-c" / "metrics.json").unlink()  # as if it had been interrupted
    run_federate(
        [TINY, f"out_dir={full_run.parents[1]}", f"run_dir={full_run}", "federation.resume=true"]
    )
    assert all(path.read_bytes() == before for path, before in kept.items())
    aside = arms / "alone_site-c.interrupted1"
    assert (aside / "state" / "ledger.json").is_file() and not (aside / "metrics.json").exists()
    assert (arms / "alone_site-c" / "metrics.json").is_file()
    summary = (full_run / "summary.md").read_text()
    assert "3 rounds planned" in summary and "| rounds run |" in summary
