"""Which site this ClientApp is, and its runtime (one per site and config, per process)."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from common.config.federated_schema import FederatedRunConfig
from common.errors import ConfigError
from common.site.facts import SiteFacts, facts_from_node_config, simulated_site
from common.site.runtime import SiteRuntime

_RUNTIMES: dict[tuple[str, int], SiteRuntime] = {}


def site_facts(node_config: Mapping[str, object], config: FederatedRunConfig) -> SiteFacts:
    """Deployment: the SuperNode's node_config names the site. Simulation: node_config holds
    only `partition-id`, which indexes the launcher-side site table. Never the server's word."""
    if "site-name" in node_config:
        return facts_from_node_config(node_config)
    if "partition-id" in node_config:
        return simulated_site(config, int(str(node_config["partition-id"])))
    raise ConfigError(
        "node_config has neither site-name (deployment) nor partition-id (simulation)"
    )


def cached_runtimes() -> int:
    """How many site runtimes this process holds (a simulation actor holds every site it ran)."""
    return len(_RUNTIMES)


def site_runtime(node_config: Mapping[str, object], config: FederatedRunConfig) -> SiteRuntime:
    facts = site_facts(node_config, config)
    key = (str(facts.state_dir.resolve()), id(config))
    runtime = _RUNTIMES.get(key)
    if runtime is None:
        runtime = _RUNTIMES[key] = SiteRuntime(facts, config)
        _log_to_state_dir(facts)
    return runtime


def _log_to_state_dir(facts: SiteFacts) -> None:
    """Errors stay at the site, in full, in state_dir/site.log (replies carry only a summary)."""
    facts.state_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(facts.state_dir / "site.log")
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger(f"mammofl.site.{facts.name}").addHandler(handler)
    logging.getLogger(f"mammofl.site.{facts.name}").setLevel(logging.INFO)
