"""`mammofl federate <overrides>`: the federated simulation end to end, then its comparison arms.

1. the simulated hospitals' archives (phantom raw downloads, a central test set of no site);
2. the main arm: a Flower simulation of the ServerApp and one ClientApp per site;
3. comparison arms, each in its own state dirs and ledgers: federated DP rounds without SynPre
   (a second Flower simulation), and each site alone with DP (the site runtime in-process);
4. the comparison table, appended to the main arm's summary.md and printed.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common.atomic_io import atomic_write_text
from common.config.compose import compose_federated_config
from common.config.federated_schema import FederatedRunConfig
from common.errors import ConfigError
from common.federated import simulation_dispatch
from common.federated.run_config import SPEC_ENV, write_spec
from common.federated.simulation_dispatch import dispatch_interval
from common.runs.output_lock import check_no_server_app, output_lock
from server.checkpoint import check_same_run, checkpoint_path, stored_overrides
from simulations.federated_arms import run_site_alone
from simulations.federated_summary import comparison_table
from simulations.federated_workspace import prepare_workspace

log = logging.getLogger("mammofl.federate")
NO_SYNPRE_OVERRIDES = ("synpre.enabled=false", "gan.enabled=false")


def run_flower(config: FederatedRunConfig, overrides: list[str], verbose: bool = False) -> None:
    """One Flower simulation (Ray backend) of server.app:app and client.app:app, one SuperNode
    per site; the overrides reach every app through $MAMMOFL_FEDERATION_SPEC."""
    from flwr.simulation import run_simulation

    from client.app import app as client_app
    from server.app import app as server_app

    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # Ray's own future default
    spec = write_spec(config.run_path / "federation.json", overrides)
    previous = os.environ.get(SPEC_ENV)
    os.environ[SPEC_ENV] = str(spec.resolve())
    flwr_logger = logging.getLogger("flwr")
    level = flwr_logger.level
    if not verbose:
        flwr_logger.setLevel(logging.ERROR)  # also hides run_simulation's deprecation notice
    backend = {
        "client_resources": {
            "num_cpus": config.simulation.num_cpus,
            "num_gpus": config.simulation.num_gpus,
        },
        "init_args": {"logging_level": "ERROR", "log_to_driver": verbose},
    }
    try:
        with dispatch_interval(simulation_dispatch.SIMULATION_DISPATCH_INTERVAL_S):
            run_simulation(
                server_app=server_app,
                client_app=client_app,
                num_supernodes=len(config.sites),
                backend_config=backend,
            )
    finally:
        flwr_logger.setLevel(level)
        if previous is None:
            os.environ.pop(SPEC_ENV, None)
        else:
            os.environ[SPEC_ENV] = previous


def check_fresh(
    config: FederatedRunConfig,
    fresh: bool,
    overrides: Sequence[str],
    elsewhere: str = "out_dir=DIR",
) -> None:
    """A new run never reuses another run's site ledgers by accident, nor touches a run_dir
    a ServerApp still writes. `elsewhere`: the option that starts the command in another
    folder."""
    run_dir = config.run_path
    check_no_server_app(run_dir)  # a running ServerApp's state is neither reset nor resumed
    if config.federation.resume:  # before Ray starts: a config the run did not have is refused
        recorded = stored_overrides(run_dir)
        if recorded is None:
            raise ConfigError(
                f"federation.resume=true but {checkpoint_path(run_dir)} does not exist: "
                "nothing to resume"
            )
        check_same_run(recorded, list(overrides))
    checkpoint = checkpoint_path(run_dir).is_file()
    used = charged_ledgers(run_dir)
    # a run that stopped before anything was charged (its ledgers empty, no checkpoint) left
    # nothing to protect: the folder is used again
    if config.federation.resume or not (checkpoint or used):
        return
    if not fresh:
        resume = "continue it with federation.resume=true, " if checkpoint else ""
        what = "its sites' ledgers record their data's use" if used else "nothing charged yet"
        raise ConfigError(
            f"{run_dir} already holds a federation ({what}): {resume}start elsewhere with "
            f"{elsewhere}, or discard its server and site states (simulated sites only) with "
            "fresh=true"
        )
    shutil.rmtree(run_dir / "server", ignore_errors=True)
    for state in (run_dir / "sites").glob("*/state"):
        shutil.rmtree(state)
    shutil.rmtree(run_dir / "arms", ignore_errors=True)


def charged_ledgers(run_dir: Path) -> bool:
    """Whether any site ledger under `run_dir` records a use of its site's data."""
    return any(_has_events(p) for p in run_dir.glob("sites/*/state/ledger.json"))


def holds_a_federation(run_dir: Path) -> bool:
    """A server checkpoint or a charged site ledger: what `check_fresh` refuses to start over
    (a rerun resumes it); a folder without either is used again."""
    return checkpoint_path(run_dir).is_file() or charged_ledgers(run_dir)


def _has_events(ledger: Path) -> bool:
    """Whether a site ledger records any use of its data (DP events, or a use without DP such
    as an MCGAN trained without it); an unreadable one: assume so."""
    try:
        state = json.loads(ledger.read_text())
    except (OSError, ValueError):
        return True
    return bool(state.get("events") or state.get("non_dp_uses"))


def run_federate(
    overrides: list[str], fresh: bool = False, verbose: bool = False, prepare_only: bool = False
) -> dict[str, Any]:
    started = time.time()
    config = compose_federated_config(overrides)
    if not config.sites:
        raise ConfigError("the preset has no site table (sites:); simulations need one")
    with output_lock("federate", run_dir=config.run_path):
        return _federate(config, overrides, fresh, verbose, prepare_only, started)


def _federate(
    config: FederatedRunConfig,
    overrides: list[str],
    fresh: bool,
    verbose: bool,
    prepare_only: bool,
    started: float,
) -> dict[str, Any]:
    check_fresh(config, fresh, overrides)
    prepare_workspace(config)
    if prepare_only:  # e.g. before `flwr run .`, which has no launcher to write them
        return {"out_dir": str(config.out_dir), "prepared": True}
    timings = {"workspace": time.time() - started}
    run_flower(config, overrides, verbose)
    timings["main"] = time.time() - started - sum(timings.values())
    stopped = config.federation.stop_after_round is not None and (
        config.federation.stop_after_round < config.federation.rounds
    )
    arms: dict[str, Path] = {"main": config.run_path}
    if not stopped:
        arms.update(run_comparison_arms(config, overrides, verbose))
    elif config.simulation.compare:
        log.info(
            "comparison arms (%s): not run, the main arm stopped after round %d of %d; they "
            "run when it is resumed (federation.resume=true)",
            ", ".join(config.simulation.compare),
            config.federation.stop_after_round,
            config.federation.rounds,
        )
    timings["arms"] = time.time() - started - sum(timings.values())
    table = comparison_table(config, arms, timings)
    summary = config.run_path / "summary.md"
    atomic_write_text(summary, summary.read_text() + "\n" + table)
    print(summary.read_text())
    return {"run_dir": str(config.run_path), "arms": {k: str(v) for k, v in arms.items()}}


def run_comparison_arms(
    config: FederatedRunConfig, overrides: list[str], verbose: bool
) -> dict[str, Path]:
    """Each arm in its own run dir (and so its own site ledgers) under run_dir/arms. With
    federation.resume=true a finished arm is kept, an interrupted Flower arm resumes from its
    checkpoint, and any other interrupted arm is set aside (never deleted: its ledgers stay)
    and run again."""
    arms: dict[str, Path] = {}
    root = config.run_path / "arms"
    resume = config.federation.resume
    base = [o for o in overrides if not o.startswith(("run_dir=", "federation.resume"))]
    if "no_synpre" in config.simulation.compare and config.synpre.enabled:
        target = root / "no_synpre"
        arm_overrides = [*base, *NO_SYNPRE_OVERRIDES, f"run_dir={target}"]
        if resume and (target / "result.json").is_file():
            log.info("arm no_synpre: finished already, kept (%s)", target)
        else:
            if resume and checkpoint_path(target).is_file():
                arm_overrides.append("federation.resume=true")
                log.info("arm no_synpre: resumed from its checkpoint")
            else:
                _set_aside(target)
                log.info("arm no_synpre: federated DP rounds from the initial model")
            run_flower(compose_federated_config(arm_overrides), arm_overrides, verbose)
        arms["no_synpre"] = target
    if "site_alone" in config.simulation.compare:
        for entry in config.sites:
            target = root / f"alone_{entry.name}"
            if resume and (target / "metrics.json").is_file():
                log.info("arm %s alone: finished already, kept (%s)", entry.name, target)
            else:
                _set_aside(target)
                log.info("arm %s alone: DP rounds on its own data", entry.name)
                main_state = config.run_path / "sites" / entry.name / "state"
                run_site_alone(config, entry, target, main_state)
            arms[f"alone_{entry.name}"] = target
    return arms


def _set_aside(target: Path) -> None:
    """An arm's folder from an earlier, interrupted attempt: renamed, never deleted (its site
    ledgers record what that attempt spent)."""
    if not target.exists():
        return
    k = 1
    while (aside := target.with_name(f"{target.name}.interrupted{k}")).exists():
        k += 1
    target.rename(aside)
    log.warning("%s was interrupted: kept as %s (ledgers too); the arm runs again", target, aside)
