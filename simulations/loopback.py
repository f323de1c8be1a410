"""A whole consortium on one machine, as deployed: one SuperLink with TLS and SuperNode
authentication, one registered SuperNode per site, each with its own node config and state.

`LoopbackFederation` makes the certificates and keys, starts and registers everything, submits
runs with `flwr run` and stops every process it started (and their children) on exit, also on
an error or Ctrl-C. `mammofl loopback` is its command; the tests share one as a fixture.
"""

from __future__ import annotations

import contextlib
import logging
import shlex
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import psutil

from common.config.federated_schema import FederatedRunConfig
from common.deploy.certificates import ConsortiumFiles, make_consortium
from common.errors import ConfigError
from common.runs.output_lock import output_lock
from common.site.facts import site_root
from simulations.flower_processes import (
    PORT_TRIES,
    ManagedProcess,
    flower_env,
    free_port,
    lost_port_race,
    register_supernode,
    submit_run,
    superlink_args,
    supernode_args,
    supernodes,
    wait_for,
    wait_run,
    write_connection,
)

log = logging.getLogger("mammofl.loopback")
PROJECT = Path(__file__).resolve().parents[1]
HOSTS = ["localhost", "127.0.0.1"]


def site_node_configs(config: FederatedRunConfig, state_root: Path) -> dict[str, dict[str, Any]]:
    """Each simulated site's row as a hospital would put it in `--node-config`: its raw
    download and prepared patches (the workspace's), its own state dir, its own epsilon cap and
    consents. The cap defaults to the run's per-site budget."""
    target = config.privacy.target_epsilon
    assert target is not None, "federated rounds are DP-SGD (checked when composed)"
    nodes = {}
    for entry in config.sites:
        root = site_root(config, entry.name)
        values: dict[str, Any] = {
            "site-name": entry.name,
            "data-dir": str((root / "patches").resolve()),
            "state-dir": str((state_root / entry.name / "state").resolve()),
            "epsilon-cap": float(entry.epsilon_cap if entry.epsilon_cap is not None else target),
            "device": entry.device,
            "allow-non-dp-synthetic": entry.allow_non_dp_synthetic,
            "share-exact-count": entry.share_exact_count,
            "share-small-set-metrics": entry.share_small_set_metrics,
        }
        if entry.phantom_style is not None:
            values["raw-dir"] = str((Path(config.out_dir) / "raw" / entry.name).resolve())
        elif entry.raw is not None:
            values["raw-dir"] = str(Path(entry.raw).resolve())
        else:
            raise ConfigError(
                f"site {entry.name}: a loopback SuperNode needs a raw download or a prepared "
                "folder (phantom_style or raw), not a shared patch source"
            )
        nodes[entry.name] = values
    return nodes


@dataclass
class SiteNode:
    name: str
    node_config: dict[str, Any]
    process: ManagedProcess
    node_id: int = 0


class LoopbackFederation:
    """Start with `with LoopbackFederation(...) as federation:`; see the module docstring."""

    def __init__(
        self,
        work: Path,
        node_configs: Mapping[str, Mapping[str, Any]],
        *,
        port: int | None = None,
        env: Mapping[str, str] | None = None,
        max_wait_time_s: float = 300.0,
    ) -> None:
        self.work = work.resolve()
        self.port_chosen = port is None  # a port of our choosing may be changed if taken
        self.port = port or free_port()
        self.env = flower_env(self.work / "flwr-home", env)
        self.node_configs = {name: dict(values) for name, values in node_configs.items()}
        self.max_wait_time_s = max_wait_time_s
        self.certs: ConsortiumFiles | None = None
        self.superlink: ManagedProcess | None = None
        self.sites: dict[str, SiteNode] = {}

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    # ---- start ---------------------------------------------------------------------------
    def __enter__(self) -> LoopbackFederation:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self, timeout: float = 120.0) -> None:
        """A new consortium each time: new keys, a new SuperLink database."""
        shutil.rmtree(self.work / "certs", ignore_errors=True)
        (self.work / "superlink.db").unlink(missing_ok=True)
        self.certs = make_consortium(self.work / "certs", HOSTS, list(self.node_configs))
        for attempt in range(1, PORT_TRIES + 1):
            self.superlink = self._superlink().start()
            write_connection(self.work / "flwr-home", self.address, self.certs.ca_certificate)
            try:
                wait_for(
                    "SuperLink",
                    lambda: self._check_superlink() or supernodes(self.env) is not None,
                    timeout,
                )
                break
            except ConfigError:
                retry = self.port_chosen and attempt < PORT_TRIES
                if not (retry and lost_port_race(self.superlink)):
                    raise
                self.superlink.stop()  # its children, if any got started
                log.info("port %d was taken before the SuperLink bound it: a new one", self.port)
                self.port = free_port()
        for name, values in self.node_configs.items():
            node_id = register_supernode(self.certs.site_public_keys[name], self.env)
            self.sites[name] = SiteNode(name, values, self._supernode(name, values), node_id)
        for site in self.sites.values():
            site.process.start()
        self.wait_online(list(self.sites), timeout, started=True)
        log.info("SuperLink %s with %d SuperNodes online", self.address, len(self.sites))

    def _superlink(self) -> ManagedProcess:
        assert self.certs is not None
        return ManagedProcess(
            "superlink",
            superlink_args(
                self.port,
                self.work / "superlink.db",
                ca_certificate=self.certs.ca_certificate,
                certificate=self.certs.superlink_certificate,
                key=self.certs.superlink_key,
            ),
            self.work / "logs" / "superlink.log",
            self.env,
        )

    def _supernode(self, name: str, values: Mapping[str, Any]) -> ManagedProcess:
        assert self.certs is not None
        return ManagedProcess(
            f"supernode-{name}",
            supernode_args(
                self.address,
                free_port(),
                values,
                ca_certificate=self.certs.ca_certificate,
                private_key=self.certs.site_private_keys[name],
                max_wait_time_s=self.max_wait_time_s,
            ),
            self.work / "logs" / f"supernode-{name}.log",
            self.env,
        )

    def _check_superlink(self) -> bool:
        if self.superlink is None or not self.superlink.alive():
            tail = self.superlink.log_tail() if self.superlink else ""
            raise ConfigError(f"the SuperLink exited (log: {self.work / 'logs'}):\n{tail}")
        return False

    def online(self) -> set[int]:
        return {int(n["node-id"]) for n in supernodes(self.env) if n.get("status") == "online"}

    def wait_online(self, names: list[str], timeout: float = 120.0, *, started: bool) -> None:
        """Wait until the sites' node ids are online. `started`: their SuperNodes were just
        started, so each must also have activated its node id itself (its log says so): an
        old process's registration still online must not pass for the new one, which flwr
        refuses to activate until the old one is seen offline."""
        wanted = {self.sites[n].node_id for n in names}

        def activated(name: str) -> bool:
            site = self.sites[name]
            return f"SuperNode ID: {site.node_id}" in site.process.log_since_start()

        starts = dict.fromkeys(names, 1)

        def ready() -> bool:
            self._check_superlink()
            for name in names:
                site = self.sites[name]
                if site.process.alive():
                    continue
                if started and starts[name] < PORT_TRIES and lost_port_race(site.process):
                    log.info("%s: its runtime port was taken before it bound it: a new one", name)
                    site.process = self._supernode(name, site.node_config).start()
                    starts[name] += 1
                    continue
                raise ConfigError(f"SuperNode {name} exited:\n{site.process.log_tail()}")
            if started and not all(activated(name) for name in names):
                return False
            return wanted <= self.online()

        wait_for(f"SuperNodes {names}", ready, timeout)

    # ---- runs ----------------------------------------------------------------------------
    def run(
        self,
        experiment: str,
        overrides: list[str],
        *,
        timeout: float = 1800.0,
        log_path: Path | None = None,
    ) -> dict[str, Any]:
        """`flwr run` the project's apps with a hydra preset and overrides; wait for the end.
        Returns the run's final status (`status` is `finished:completed` when it succeeded)."""
        run_id = self.submit(experiment, overrides)
        return wait_run(
            run_id, self.env, timeout, log_path or self.work / "logs" / f"run-{run_id}.log"
        )

    def submit(self, experiment: str, overrides: list[str]) -> int:
        """`flwr run` the project's apps with a hydra preset and overrides; returns the run id
        at once (the run goes on)."""
        run_config = {"experiment": experiment, "overrides": shlex.join(overrides)}
        run_id = submit_run(PROJECT, run_config, self.env)
        log.info("run %d submitted (%s)", run_id, experiment)
        return run_id

    def serverapps(self) -> list[psutil.Process]:
        """The ServerApp processes the SuperLink's SuperExec runs now."""
        assert self.superlink is not None
        found = []
        for process in self.superlink.tree():
            with contextlib.suppress(psutil.Error):
                if any(Path(part).name == "flwr-serverapp" for part in process.cmdline()):
                    found.append(process)
        return found

    # ---- faults --------------------------------------------------------------------------
    def kill_supernode(self, name: str) -> None:
        """SIGKILL a site's SuperNode and its ClientApps, as a crash or a power cut would."""
        self.sites[name].process.kill()

    def restart_supernode(self, name: str, timeout: float = 180.0) -> None:
        """Start a site's SuperNode again once the SuperLink has noticed the old one is gone:
        flwr 1.42 refuses to activate a node id it still holds online, which it does until
        two missed heartbeats (about 60 s after a crash)."""
        self._wait_offline(name, timeout)
        self.sites[name].process.start()
        self.wait_online([name], timeout, started=True)

    def _wait_offline(self, name: str, timeout: float) -> None:
        node_id = self.sites[name].node_id
        wait_for(f"{name} seen offline", lambda: node_id not in self.online(), timeout, 2.0)

    def restart_superlink(self, timeout: float = 120.0) -> None:
        """SIGKILL the SuperLink with its SuperExec and ServerApp, then start it again on the
        same database (registered keys, runs) and port; the SuperNodes reconnect."""
        assert self.superlink is not None
        self.superlink.kill()
        self.superlink.start()
        wait_for(
            "SuperLink",
            lambda: self._check_superlink() or supernodes(self.env) is not None,
            timeout,
        )
        self.wait_online(list(self.sites), timeout, started=False)  # the same processes

    def reconfigure(
        self, node_configs: Mapping[str, Mapping[str, Any]], timeout: float = 180.0
    ) -> None:
        """Restart every SuperNode with a new node config (same keys, so same node ids), e.g.
        fresh state dirs: a hospital's ledger otherwise carries over from run to run. A
        SuperNode stopped gracefully deactivates its node id; one that could not is online
        until two missed heartbeats, so each new process starts once its old one is offline."""
        for name, values in node_configs.items():
            site = self.sites[name]
            site.process.stop()
            self._wait_offline(name, timeout)
            site.node_config = dict(values)
            site.process = self._supernode(name, site.node_config)
            site.process.start()
        self.wait_online(list(node_configs), timeout, started=True)

    # ---- stop ----------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop the SuperLink (its ServerApp with it), then every SuperNode, each with its
        whole process tree. In this order a run stopped mid-round (Ctrl-C) keeps its last
        checkpoint: with the sites stopped first, the ServerApp saw them all unavailable,
        charged the round at their budgets and wrote a 1-round result as if completed."""
        if self.superlink is not None:
            self.superlink.stop()
        for site in self.sites.values():
            site.process.stop()

    def leftovers(self) -> list[str]:
        """Processes still running that belong to this federation (should be none)."""
        markers = [str(self.work), f":{self.port}"]
        markers += [
            f":{s.process.args[s.process.args.index('--port') + 1]}" for s in self.sites.values()
        ]
        found = []
        for process in psutil.process_iter(["pid", "cmdline"]):
            line = " ".join(process.info.get("cmdline") or [])
            if any(marker in line for marker in markers) and "pytest" not in line:
                found.append(f"{process.info['pid']}: {line[:200]}")
        return found


def run_loopback(
    overrides: list[str], work_dir: Path, timeout: float = 3600.0, fresh: bool = False
) -> dict[str, Any]:
    """`mammofl loopback`: the preset's phantom hospitals as a real consortium on this machine
    (TLS, registered SuperNodes), one run, then every process stopped. Returns the summary."""
    from common.config.compose import compose_federated_config
    from simulations.federate import check_fresh
    from simulations.federated_workspace import prepare_workspace

    work_dir = work_dir.resolve()
    named = {o.split("=", 1)[0] for o in overrides}
    defaults = [f"out_dir={work_dir / 'data'}", f"run_dir={work_dir / 'run'}"]
    overrides = [d for d in defaults if d.split("=", 1)[0] not in named] + overrides
    overrides = [*overrides, "simulation.compare=[]"]  # comparison arms are simulation-only
    experiment = next(
        (o.split("=", 1)[1] for o in overrides if o.startswith("experiment=")), "federated/phantom"
    )
    rest = [o for o in overrides if not o.startswith("experiment=")]
    config = compose_federated_config([f"experiment={experiment}", *rest])
    config_paths = [
        f"out_dir={Path(config.out_dir).resolve()}",
        f"run_dir={config.run_path.resolve()}",
    ]
    rest = [o for o in rest if not o.startswith(("out_dir=", "run_dir="))] + config_paths
    with output_lock("loopback", work_dir=work_dir, run_dir=config.run_path):
        # a second run must not reuse the sites' spent ledgers; a resume must be the same run
        elsewhere = "work_dir=DIR (or run_dir=DIR)"
        check_fresh(config, fresh, [f"experiment={experiment}", *rest], elsewhere)
        prepare_workspace(config)
        nodes = site_node_configs(config, config.run_path.resolve() / "sites")
        started = time.monotonic()
        with LoopbackFederation(work_dir / "consortium", nodes) as federation:
            status = federation.run(
                experiment, rest, timeout=timeout, log_path=config.run_path / "flower-run.log"
            )
        leftovers = federation.leftovers()
    return {
        "status": status.get("status"),
        "details": status.get("status-details"),
        "run_dir": str(config.run_path.resolve()),
        "flower_log": str(config.run_path.resolve() / "flower-run.log"),
        "process_logs": str(federation.work / "logs"),
        "wall_time_s": round(time.monotonic() - started, 1),
        "processes_left": leftovers,
    }
