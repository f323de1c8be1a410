"""Site-local facts: who the site is, where its data and state live, its own epsilon cap.

They come from the SuperNode's `node_config` in a deployment (set by the hospital, never by the
server), or, in a simulation, from the launcher-side site table (`FederatedRunConfig.sites`,
one row per partition id). Nothing here is ever sent to the server except the site's name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from common.config.federated_schema import FederatedRunConfig, SiteEntry
from common.config.schema import PatchSourceConfig
from common.errors import ConfigError

NODE_CONFIG_KEYS = (
    "site-name",
    "data-dir",
    "raw-dir",
    "state-dir",
    "epsilon-cap",
    "device",
    "share-exact-count",
)


@dataclass(frozen=True)
class SiteFacts:
    name: str
    state_dir: Path
    data_dir: Path  # the prepared patch set (manifest.csv + split.csv)
    raw_dir: Path | None = None  # a raw CBIS-DDSM-layout download, prepared into data_dir
    patches: PatchSourceConfig | None = None  # or a patch source used as it is
    partition: tuple[int, int] | None = None  # (index, count) per-patient share of `patches`
    epsilon_cap: float | None = None
    device: str = "cpu"
    share_exact_count: bool = False

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise ConfigError(f"site name {self.name!r}: non-empty, no '/'")
        if self.epsilon_cap is not None and self.epsilon_cap <= 0:
            raise ConfigError(f"site {self.name}: epsilon-cap must be > 0")


def _flag(value: object) -> bool:
    return str(value).lower() in ("1", "true", "yes")


def facts_from_node_config(node_config: Mapping[str, object]) -> SiteFacts:
    """A deployed SuperNode's `--node-config` (keys in NODE_CONFIG_KEYS)."""
    missing = [k for k in ("site-name", "data-dir", "state-dir") if k not in node_config]
    if missing:
        raise ConfigError(
            f"node_config lacks {missing}; start the SuperNode with --node-config "
            "\"site-name='...' data-dir='...' state-dir='...' epsilon-cap=6\""
        )
    cap = node_config.get("epsilon-cap")
    raw = node_config.get("raw-dir")
    return SiteFacts(
        name=str(node_config["site-name"]),
        state_dir=Path(str(node_config["state-dir"])),
        data_dir=Path(str(node_config["data-dir"])),
        raw_dir=Path(str(raw)) if raw else None,
        epsilon_cap=float(str(cap)) if cap not in (None, "") else None,
        device=str(node_config.get("device", "cpu")),
        share_exact_count=_flag(node_config.get("share-exact-count", False)),
    )


def site_root(config: FederatedRunConfig, name: str) -> Path:
    return Path(config.out_dir) / "sites" / name


def facts_from_entry(entry: SiteEntry, config: FederatedRunConfig, state_dir: Path) -> SiteFacts:
    """A simulated site from the launcher-side table; its prepared patches live under
    `out_dir/sites/<name>/patches` (shared by the comparison arms), its state in `state_dir`."""
    root = site_root(config, entry.name)
    raw = None
    if entry.phantom_style is not None:
        raw = Path(config.out_dir) / "raw" / entry.name
    elif entry.raw is not None:
        raw = Path(entry.raw)
    partition = None
    if entry.partition is not None and entry.partitions is not None:
        partition = (entry.partition, entry.partitions)
    return SiteFacts(
        name=entry.name,
        state_dir=state_dir,
        data_dir=root / "patches",
        raw_dir=raw,
        patches=entry.patches,
        partition=partition,
        epsilon_cap=entry.epsilon_cap,
        device=entry.device,
        share_exact_count=entry.share_exact_count,
    )


def simulated_site(config: FederatedRunConfig, partition_id: int) -> SiteFacts:
    """The site table row of a simulated SuperNode (`node_config['partition-id']`); its state
    lives in `run_dir/sites/<name>/state`, so each comparison arm has its own ledgers."""
    if not 0 <= partition_id < len(config.sites):
        raise ConfigError(
            f"partition-id {partition_id}: the site table has {len(config.sites)} sites; run the "
            "simulation with num-supernodes equal to the number of sites"
        )
    entry = config.sites[partition_id]
    return facts_from_entry(entry, config, config.run_path / "sites" / entry.name / "state")
