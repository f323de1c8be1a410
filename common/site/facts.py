"""Site-local facts: who the site is, where its data and state live, its own epsilon cap.

They come from the SuperNode's `node_config` in a deployment (set by the hospital, never by the
server), or, in a simulation, from the launcher-side site table (`FederatedRunConfig.sites`,
one row per partition id). Nothing here is ever sent to the server except the site's name.
"""

from __future__ import annotations

import logging
import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from difflib import get_close_matches
from pathlib import Path

from common.config.federated_schema import FederatedRunConfig, SiteEntry
from common.config.option_values import flag, is_folder_name, number, seed_number
from common.config.schema import MAX_EPSILON, PatchSourceConfig
from common.errors import ConfigError

log = logging.getLogger(__name__)
NODE_CONFIG_KEYS = (
    "site-name",
    "data-dir",
    "raw-dir",
    "state-dir",
    "epsilon-cap",
    "delta-cap",
    "device",
    "share-exact-count",
    "share-small-set-metrics",
    "allow-non-dp-synthetic",
    "seeded-noise",
    "noise-seed",
)


@dataclass(frozen=True)
class SiteFacts:
    name: str
    state_dir: Path
    data_dir: Path  # the prepared patch set (manifest.csv, with its split column)
    raw_dir: Path | None = None  # a raw CBIS-DDSM-layout download, prepared into data_dir
    patches: PatchSourceConfig | None = None  # or a patch source used as it is
    partition: tuple[int, int] | None = None  # (index, count) per-patient share of `patches`
    epsilon_cap: float | None = None
    # the largest delta the site accepts (None: only delta < 1/N, checked on its data); the
    # server chooses delta, and a ledger keeps the first one it was written with
    delta_cap: float | None = None
    device: str = "cpu"
    share_exact_count: bool = False
    # may this site send local validation metrics of a set too small for the rounding to hide
    # its class counts (fewer than MIN_RELEASED_CLASS_COUNT patches of a class)?
    share_small_set_metrics: bool = False
    # may this site send synthetic patches of an MCGAN trained without DP (no formal guarantee)?
    allow_non_dp_synthetic: bool = False
    # the seeded research mode, only with the site's consent and a seed the server never sees
    noise_seed: int | None = None

    def __post_init__(self) -> None:
        if not is_folder_name(self.name):
            raise ConfigError(f"site name {self.name!r}: non-empty, no '/' or '\\', not . or ..")
        if self.epsilon_cap is not None and not 0 < self.epsilon_cap <= MAX_EPSILON:
            raise ConfigError(f"site {self.name}: epsilon-cap must be > 0, at most {MAX_EPSILON:g}")
        if self.delta_cap is not None and not 0 < self.delta_cap < 1:
            raise ConfigError(f"site {self.name}: delta-cap must be in (0, 1), e.g. 1e-5")


def _flag(node_config: Mapping[str, object], key: str) -> bool:
    """A yes/no key, false when absent; a mistyped value (`=ture`) is refused, not read as no."""
    return flag(f"node_config {key}", node_config.get(key, False))


def _number(node_config: Mapping[str, object], key: str, example: str) -> float:
    """A finite number (a NaN cap would be ignored by min(), an infinite one is no cap)."""
    return number(f"node_config {key}", node_config[key], example=example)


def _folder(node_config: Mapping[str, object], key: str) -> Path:
    """A folder key: an empty value would be '.', the SuperNode's working directory."""
    value = str(node_config[key]).strip()
    if not value:
        raise ConfigError(f"node_config {key} is empty: give the folder, e.g. {key}='/srv/site'")
    return Path(value)


# Flower's own keys of a simulated node (never read from a deployed one)
FLOWER_KEYS = ("partition-id", "num-partitions")
DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?|mps")


def _check_keys(node_config: Mapping[str, object]) -> None:
    """ConfigError for a key that looks like a misspelt mammofl key: `delta_cap` would
    otherwise be no delta cap at all, `devise` the CPU. A SuperNode's node_config is shared by
    every Flower app it runs, so a key unlike any of mammofl's is another app's: logged."""
    unknown = [k for k in node_config if k not in (*NODE_CONFIG_KEYS, *FLOWER_KEYS)]
    close = {k: get_close_matches(k, NODE_CONFIG_KEYS, 1) for k in unknown}
    misspelt = {k: match[0] for k, match in close.items() if match}
    if misspelt:
        hints = ", ".join(f"{k!r} (did you mean {key!r}?)" for k, key in misspelt.items())
        raise ConfigError(
            f"node_config: unknown key {hints}; the keys are {', '.join(NODE_CONFIG_KEYS)}"
        )
    if unknown:
        log.warning("node_config keys %s are not mammofl's: not read", ", ".join(unknown))


def facts_from_node_config(node_config: Mapping[str, object]) -> SiteFacts:
    """A deployed SuperNode's `--node-config` (keys in NODE_CONFIG_KEYS)."""
    required = ("site-name", "data-dir", "state-dir", "epsilon-cap")
    missing = [k for k in required if k not in node_config]
    if missing:
        raise ConfigError(
            f"node_config lacks {missing}; start the SuperNode with --node-config "
            "\"site-name='...' data-dir='...' state-dir='...' epsilon-cap=6\" (the cap is the "
            "hospital's own, never the server's)"
        )
    _check_keys(node_config)
    seed = node_config.get("noise-seed")
    seeded = _flag(node_config, "seeded-noise")
    if seeded and seed in (None, ""):
        raise ConfigError("node_config seeded-noise=true needs noise-seed=<the site's own seed>")
    device = str(node_config.get("device", "cpu")).strip()
    if not DEVICE.fullmatch(device):
        raise ConfigError(f"node_config device={device!r}: auto, cpu, cuda, cuda:<index> or mps")
    return SiteFacts(
        name=str(node_config["site-name"]),
        state_dir=_folder(node_config, "state-dir"),
        data_dir=_folder(node_config, "data-dir"),
        raw_dir=_folder(node_config, "raw-dir") if node_config.get("raw-dir") else None,
        epsilon_cap=_number(node_config, "epsilon-cap", example="6"),
        delta_cap=(
            _number(node_config, "delta-cap", example="1e-5")
            if "delta-cap" in node_config
            else None
        ),
        device=device,
        share_exact_count=_flag(node_config, "share-exact-count"),
        share_small_set_metrics=_flag(node_config, "share-small-set-metrics"),
        allow_non_dp_synthetic=_flag(node_config, "allow-non-dp-synthetic"),
        noise_seed=seed_number("node_config noise-seed", seed) if seeded else None,
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
        share_small_set_metrics=entry.share_small_set_metrics,
        allow_non_dp_synthetic=entry.allow_non_dp_synthetic,
        # a simulation's researcher is every party: its seeded mode is the launcher's choice
        noise_seed=(config.seed + zlib.crc32(entry.name.encode()) if config.seeded_noise else None),
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
