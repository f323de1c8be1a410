"""The federation as deployed, with real processes on loopback: one SuperLink (TLS, SuperNode
authentication) shared by the tests of this module, one registered SuperNode per site.

- only registered keys and TLS clients are admitted;
- a SuperNode killed mid-round: the round goes on without it, the site comes back (same node
  id) and trains again, and every ledger is right (the killed site pays what it reserved);
- the ServerApp killed at the defined point (after round 2's checkpoint, before round 3 is
  dispatched), the SuperLink killed with it and restarted on its database, and the run
  resumed: the ledgers and round count of an uninterrupted run;
- client-level DP reports both guarantees, the server's equal to dp-accounting's.

The uninterrupted reference is `mammofl loopback` itself (its own SuperLink, stopped after).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import dp_accounting
import pytest

from common.deploy.certificates import make_consortium
from common.privacy.ledger import LedgerEvent, PrivacyLedger
from simulations import loopback
from simulations.flower_processes import (
    ManagedProcess,
    free_port,
    supernode_args,
    supernodes,
    wait_for,
)
from simulations.loopback import LoopbackFederation, site_node_configs
from tests.conftest import tiny_federated_config

pytestmark = pytest.mark.slow

EXPERIMENT = "federated/tiny"
# the rounds are what the reference and the resumed run compare: no SynPre here (the
# documented steps' test runs the whole preset, SynPre and site evaluation included, on a
# SuperLink of its own)
ROUNDS_ONLY = ["synpre.enabled=false", "gan.enabled=false", "federation.site_evaluation=false"]
CLIENT_DP = ["federation.client_dp.enabled=true", "federation.client_dp.delta=0.1"]
BIN = Path(sys.executable).parent


def _json(path: Path) -> Any:
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def reference(tiny_workspace: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`mammofl loopback` on federated/tiny's rounds with client-level DP: the uninterrupted
    run (and the command itself: it must leave no process behind)."""
    work = tmp_path_factory.mktemp("loopback")
    done = subprocess.run(
        [
            str(BIN / "mammofl"),
            "loopback",
            f"experiment={EXPERIMENT}",
            f"work_dir={work}",
            f"out_dir={tiny_workspace}",
            f"run_dir={work / 'run'}",
            *ROUNDS_ONLY,
            *CLIENT_DP,
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads(done.stdout[done.stdout.index("{") :])
    assert summary["status"] == "finished:completed" and summary["processes_left"] == []
    return work / "run"


@pytest.fixture(scope="module")
def consortium(tiny_workspace: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """The module's consortium, started as a busy machine can start it: the port chosen for
    the SuperLink and the one for the first SuperNode are taken by another program before
    they bind them (`test_a_port_taken_before_binding_is_replaced` checks both moved on)."""
    work = tmp_path_factory.mktemp("consortium")
    config = tiny_federated_config(tiny_workspace)
    with socket.socket() as other_program, pytest.MonkeyPatch.context() as patch:
        other_program.bind(("127.0.0.1", 0))
        other_program.listen()
        taken = other_program.getsockname()[1]
        chosen = iter([taken, 0, taken])  # SuperLink, its second try, the first SuperNode
        patch.setattr(loopback, "free_port", lambda: next(chosen, 0) or free_port())
        with LoopbackFederation(work, site_node_configs(config, work / "unused")) as federation:
            patch.undo()  # later starts (restarts, new node configs) choose ports as usual
            federation.taken_port = taken  # type: ignore[attr-defined]
            yield federation
    left = wait_for("processes gone", lambda: not federation.leftovers(), 30)
    assert left


def _fresh_sites(federation: LoopbackFederation, tiny_workspace: Path, run_dir: Path) -> None:
    config = tiny_federated_config(tiny_workspace)
    federation.reconfigure(site_node_configs(config, run_dir / "sites"))


def _overrides(tiny_workspace: Path, run_dir: Path, *extra: str) -> list[str]:
    return [f"out_dir={tiny_workspace}", f"run_dir={run_dir}", "simulation.compare=[]", *extra]


# ---- the reference run: TLS, authentication, 3 SuperNodes, both guarantees ---------------
def test_three_supernodes_complete_tiny_rounds_with_both_guarantees(reference: Path) -> None:
    result = _json(reference / "result.json")
    assert result["rounds_completed"] == 3
    # the preset's site table (caps, consents) is not taken for the hospitals' node configs
    assert "own node config" in result["sites_note"]
    ledger = _json(reference / "ledger.json")
    assert sorted(ledger["sites"]) == ["site-a", "site-b", "site-c"]
    for site in ledger["sites"].values():  # sample-level: each site's patches, DP-SGD
        assert len(site["epsilon_after_round"]) == 3
        assert 0 < site["epsilon"] <= site["budget"]
    client = ledger["client_level"]  # client-level: a whole site, the server's noise
    independent = dp_accounting.rdp.RdpAccountant()
    independent.compose(dp_accounting.GaussianDpEvent(client["noise_multiplier"]), 3)
    assert client["unit"] == "site" and client["releases"] == 3
    assert client["epsilon"] == pytest.approx(independent.get_epsilon(client["delta"]), rel=1e-9)
    assert result["privacy"]["client_level"]["epsilon"] == client["epsilon"]
    # federation.site_evaluation=false: no site scored its validation patients, none recorded it
    assert all(r["sites"] == {} for r in _json(reference / "metrics.json")["rounds"])
    assert all(site["non_dp_uses"] == [] for site in ledger["sites"].values())


def test_a_port_taken_before_binding_is_replaced(consortium: LoopbackFederation) -> None:
    """`free_port` only probes: a port taken between the probe and the bind made `mammofl
    loopback` fail at random ("address already in use"); each process now moves on."""
    taken = consortium.taken_port  # type: ignore[attr-defined]
    assert consortium.port != taken
    first = next(iter(consortium.sites.values())).process
    assert first.args[first.args.index("--port") + 1] != str(taken)
    assert first.log_tail(100_000).lower().count("address already in use") == 1
    assert consortium.online() == {site.node_id for site in consortium.sites.values()}


# ---- admission ---------------------------------------------------------------------------
def _intruder(federation: LoopbackFederation, tmp_path: Path, **kwargs: Any) -> ManagedProcess:
    args = supernode_args(
        federation.address,
        free_port(),
        {"site-name": "intruder"},
        max_retries=2,
        max_wait_time_s=20,
        **kwargs,
    )
    return ManagedProcess("intruder", args, tmp_path / "intruder.log", federation.env).start()


def _refused(process: ManagedProcess) -> str:
    assert process.popen is not None
    code = process.popen.wait(timeout=90)
    assert code != 0, process.log_tail()
    return process.log_tail(100_000)


def test_unregistered_key_is_refused(consortium: LoopbackFederation, tmp_path: Path) -> None:
    rogue = make_consortium(tmp_path / "rogue", ["localhost"], ["intruder"])
    assert consortium.certs is not None
    before = len(supernodes(consortium.env))
    log = _refused(
        _intruder(
            consortium,
            tmp_path,
            ca_certificate=consortium.certs.ca_certificate,
            private_key=rogue.site_private_keys["intruder"],
        )
    )
    assert "Failed to activate SuperNode" in log
    assert "No SuperNode found with the given public key" in consortium.superlink.log_tail(20000)  # type: ignore[union-attr]
    assert len(supernodes(consortium.env)) == before


def test_plaintext_client_is_refused(consortium: LoopbackFederation, tmp_path: Path) -> None:
    before = len(supernodes(consortium.env))
    log = _refused(_intruder(consortium, tmp_path, ca_certificate=None, private_key=None))
    assert "Starting insecure channel" in log and "could not establish a connection" in log
    assert len(supernodes(consortium.env)) == before


# ---- a SuperNode dies mid-round ----------------------------------------------------------
def _run_in_background(
    federation: LoopbackFederation, overrides: list[str], out: dict[str, Any]
) -> threading.Thread:
    def work() -> None:
        try:
            out["status"] = federation.run(EXPERIMENT, overrides, timeout=900)
        except BaseException as error:  # surfaced by the test
            out["error"] = error

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread


def _reserved(ledger_path: Path, round_number: int) -> bool:
    try:
        events = _json(ledger_path)["events"]
    except (OSError, ValueError, KeyError):
        return False
    return any(e["round"] == round_number and e["status"] == "reserved" for e in events)


def _epsilon(events: list[dict[str, Any]], delta: float) -> float:
    ledger = PrivacyLedger(delta=delta, accountant="rdp", unit="patch")
    ledger.events = [LedgerEvent(**e) for e in events]
    return ledger.epsilon()


def test_supernode_killed_mid_round_rejoins_and_ledgers_are_right(
    consortium: LoopbackFederation, tiny_workspace: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    _fresh_sites(consortium, tiny_workspace, run_dir)
    overrides = _overrides(
        tiny_workspace,
        run_dir,
        *ROUNDS_ONLY,
        # site-c is back once its old session expires (about a minute after the kill): by
        # round 4 at the latest; round 5 leaves a whole round of margin
        "federation.rounds=5",
        # a round long enough (a few seconds of steps) to be caught in the middle on a busy
        # machine: with 40 epochs (well under a second) CI's kill once came after the round's
        # last step
        "federation.local_epochs=400",
        # a round's replies expire then: round 1 (the ClientApp's imports, then the first
        # features) once took 61 s on a busy CI machine, past the 45 s set before
        "federation.reply_timeout_s=90",
    )
    out: dict[str, Any] = {}
    thread = _run_in_background(consortium, overrides, out)
    site_c = run_dir / "sites" / "site-c" / "state" / "ledger.json"
    wait_for("site-c reserving round 2", lambda: _reserved(site_c, 2) or out, 600, 0.05)
    assert not out, f"the run ended before site-c reserved round 2: {out}"
    consortium.kill_supernode("site-c")
    # what site-c's own ledger holds once its processes are dead: round 2 reserved (killed while
    # training) or settled (its steps ended before the kill landed, and the reply died with the
    # SuperNode); either way the round stays charged as it is now
    at_kill = _json(site_c)["events"]
    assert [e["round"] for e in at_kill] == [1, 2]
    killed_after_settling = at_kill[1]["status"] == "settled"
    consortium.restart_supernode("site-c")
    thread.join(timeout=900)
    assert "error" not in out, out.get("error")
    assert out["status"]["status"] == "finished:completed", out["status"]

    assert _json(run_dir / "result.json")["rounds_completed"] == 5
    rounds = _json(run_dir / "metrics.json")["rounds"]
    assert "site-c" not in rounds[1]["trained"], "the kill came after site-c's reply arrived"
    assert "site-c" in rounds[1]["refused"]
    assert rounds[-1]["trained"] == ["site-a", "site-b", "site-c"]  # back
    ledger = _json(run_dir / "ledger.json")
    # after round 2 the server counted site-c's silent round at its plan (presumed): the
    # epsilon of the two rounds the site's own ledger holds by then
    after = ledger["sites"]["site-c"]["epsilon_after_round"]
    own_c = _json(site_c)
    assert after[1] > after[0]
    assert after[1] == pytest.approx(_epsilon(own_c["events"][:2], own_c["delta"]))
    for name in ("site-a", "site-b", "site-c"):
        own = _json(run_dir / "sites" / name / "state" / "ledger.json")
        mirrored = ledger["sites"][name]
        assert mirrored["events"] == own["events"]  # the server's copy is the site's own
        assert mirrored["epsilon"] == pytest.approx(_epsilon(own["events"], own["delta"]))
        assert mirrored["epsilon"] <= mirrored["budget"]
        trained = [r["round"] for r in rounds if name in r["trained"]]
        lost = [2] if name == "site-c" else []  # charged, but the server never got it
        settled = [e["round"] for e in own["events"] if e["status"] == "settled"]
        assert settled == sorted(trained + (lost if killed_after_settling else [])), name
        reserved = [e["round"] for e in own["events"] if e["status"] == "reserved"]
        assert reserved == ([] if killed_after_settling else lost), name
    # nothing after the restart touched or replayed round 2: the later events are new rounds
    final_c = _json(site_c)["events"]
    assert final_c[:2] == at_kill and all(e["round"] > 2 for e in final_c[2:])
    # what site-c reserved for round 2 is exactly one round of its plan
    own_c = _json(site_c)["events"]
    assert {k: own_c[1][k] for k in ("noise_multiplier", "sample_rate", "steps")} == {
        k: own_c[0][k] for k in ("noise_multiplier", "sample_rate", "steps")
    }

    # a second run on the same sites: their ledgers leave no round, so it stops before SynPre
    # (it pretrained for minutes, then ended "completed" with a model no site trained); it is
    # submitted with `mammofl submit`, which exits 1 for the failed run (flwr run: 0)
    again = tmp_path / "again"
    refused = subprocess.run(
        [
            str(BIN / "mammofl"),
            "submit",
            f"experiment={EXPERIMENT}",
            *_overrides(tiny_workspace, again, "federation.site_evaluation=false"),
        ],
        env=consortium.env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert refused.returncode == 1, refused.stdout[-3000:] + refused.stderr[-3000:]
    assert "ended finished:failed" in refused.stderr, refused.stderr
    log_text = refused.stdout  # the run's log, streamed
    assert "mammofl: error: no round can run: " in log_text  # site-c may have one round left
    assert "Traceback" not in log_text  # a refusal, said in one line
    assert "site-a: budget spent" in log_text and "site-b: budget spent" in log_text
    assert not (again / "server" / "checkpoint.pt").exists()
    assert not (again / "result.json").exists()
    for name in ("site-a", "site-b", "site-c"):  # nothing more charged
        own = _json(run_dir / "sites" / name / "state" / "ledger.json")
        assert own["events"] == ledger["sites"][name]["events"]


# ---- the ServerApp dies after round 2's checkpoint, the SuperLink with it ----------------
def test_server_killed_after_round_2_resumes_to_the_uninterrupted_ledgers(
    consortium: LoopbackFederation, tiny_workspace: Path, tmp_path: Path, reference: Path
) -> None:
    import torch

    run_dir = tmp_path / "run"
    _fresh_sites(consortium, tiny_workspace, run_dir)
    overrides = _overrides(tiny_workspace, run_dir, *ROUNDS_ONLY, *CLIENT_DP)
    consortium.submit(EXPERIMENT, [*overrides, "federation.kill_after_round=2"])
    checkpoint_path = run_dir / "server" / "checkpoint.pt"

    def killed_after_round_2() -> bool:
        if not checkpoint_path.is_file() or consortium.serverapps():
            return False
        return bool(torch.load(checkpoint_path, weights_only=False)["round"] == 2)

    # the coordinating centre's machine goes down with its ServerApp: the SuperLink too, before
    # it notices the ServerApp is gone (it would mark the run failed about 80 s later)
    wait_for("the ServerApp gone after round 2's checkpoint", killed_after_round_2, 600, 0.5)
    consortium.restart_superlink()
    assert not (run_dir / "result.json").exists()
    for name in ("site-a", "site-b", "site-c"):  # nothing of round 3 was dispatched
        own = _json(run_dir / "sites" / name / "state" / "ledger.json")
        assert [e["round"] for e in own["events"]] == [1, 2]
    resumed = consortium.run(EXPERIMENT, [*overrides, "federation.resume=true"])
    assert resumed["status"] == "finished:completed", resumed

    ours, theirs = _json(run_dir / "ledger.json"), _json(reference / "ledger.json")
    assert _json(run_dir / "result.json")["rounds_completed"] == 3
    for name, site in theirs["sites"].items():
        for key in ("events", "epsilon", "epsilon_after_round", "budget", "non_dp_uses"):
            assert ours["sites"][name][key] == site[key], (name, key)
    for key in ("epsilon", "releases", "epsilon_after_round"):
        assert ours["client_level"][key] == theirs["client_level"][key], key
