"""Benchmark `federated`: the orchestration overhead of `federated/phantom`'s DP rounds at 3 to
10 simulated sites, against the sites' own local compute; Flower's default orchestration (the
before) and mammofl's (the after) side by side in one process.

    .venv/bin/mammofl bench federated [sites=3,5,10] [modes=flower,mammofl] [gan_epochs=5]
        [synpre_epochs=1] [preset=federated/phantom] [out_dir=runs/bench_federated] [<overrides>]

Each site count, in each mode, is its own Flower simulation of the preset with that
many phantom sites (the preset's three acquisition styles in turn, each site its own patients),
in a shared workspace (`out_dir`: raw downloads, prepared patches, the central test set; all
prepared before the first timed run) and a fresh run dir (`out_dir/n<sites>_<mode>`). The
comparison arms of `mammofl federate` do not run.

Phase 1 (each site's MCGAN, SynPre at the server) is shrunk by default to `gan_epochs=5` and
`synpre_epochs=1` (the preset: 200 and 15) so that 3 + 5 + 10 sites run in minutes on 2 cores:
it is not what is measured, and the rounds' work (model, trainable head, data, steps) is the
preset's whatever its weights. `gan_epochs=preset synpre_epochs=preset` keeps the preset's.

What is measured (exact definitions: `common/federated/overhead.py`):
- local compute t_i: the seconds a site's ClientApp spent on a round's message, timed inside
  the site (`state_dir/timing.jsonl`, never sent); per round its sum, its max, and the critical
  path C: the best schedule of the round's jobs on the P ClientApps that run at once (Ray
  actors; 1 CPU each by default, so P = 2 on a 2-core machine), over its exchanges (train,
  and evaluate where the round has one), each a barrier;
- round wall W: the server's round, from selecting its sites to its checkpoint written
  (`run_dir/server/timing.jsonl`); overhead = W - C, ratio = overhead / C;
- where the overhead goes: messaging (exchange time beyond C: dispatch, the wait for the first
  ClientApp; sched, gaps between a worker's messages; collect, the last reply's way back) and
  the server's own work (aggregation, central evaluation, checkpoint), the rest "other";
- apart from the rounds: start-up (launch to the first ClientApp message: Ray, actors,
  imports), set-up (sites' status, MCGANs, SynPre, base model), end (outputs, Ray shutdown);
- memory: each ClientApp process's peak resident memory (ru_maxrss; a Ray actor runs several
  simulated sites and keeps them all) and the whole process tree's peak (psutil, every 0.5 s).

`modes`: the orchestrations to compare (`MODES`):
- `flower`: Flower's defaults: the server looks for replies every 0.1 s (InMemoryGrid), the
  simulation engine hands out messages every 0.1 s (`simulation_dispatch`), and every round
  has a train and an evaluate exchange (`federation.evaluate_with_train=false`);
- `mammofl`: what `mammofl federate` runs: 0.01 s polls
  (`server.federation.SIMULATION_PULL_INTERVAL_S`), 0.01 s dispatch
  (`common.federated.simulation_dispatch.SIMULATION_DISPATCH_INTERVAL_S`), and one exchange a
  round (the sites score the previous round's model on the train message; the last round's
  evaluate exchange is its own).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil

import server.federation
from common.config.compose import compose_federated_config
from common.config.federated_schema import PHANTOM_STYLES
from common.errors import ConfigError
from common.federated import simulation_dispatch
from common.federated.overhead import (
    round_overheads,
    totals,
    worker_memory,
)
from common.federated.timing import read_run_timings
from common.runs.output_lock import empty_held_folder, output_lock
from common.site.data import ensure_prepared
from common.site.facts import facts_from_entry
from simulations.bench_federated_report import RunTiming, print_tables
from simulations.bench_main_job import tree_rss
from simulations.cli import split_options
from simulations.federate import run_flower
from simulations.federated_workspace import prepare_workspace
from simulations.machine import cpu_name

DEFAULTS = {
    "preset": "federated/phantom",
    "sites": "3,5,10",
    "modes": "flower,mammofl",
    "gan_epochs": "5",
    "synpre_epochs": "1",
    "out_dir": "runs/bench_federated",
}
PHASE1 = {"gan_epochs": "gan.train.epochs", "synpre_epochs": "synpre.epochs"}


def parse_counts(value: str, *, low: int = 2) -> list[int]:
    """`3,5,10` (or `[3,5,10]`) -> [3, 5, 10]: distinct site counts, each at least `low`."""
    try:
        counts = [int(v) for v in value.strip("[]").split(",") if v.strip()]
    except ValueError as error:
        raise ConfigError(f"sites={value}: whole numbers, e.g. sites=3,5,10") from error
    if not counts or min(counts) < low or len(set(counts)) != len(counts):
        raise ConfigError(f"sites={value}: distinct counts, each >= {low} (min_sites)")
    return counts


@dataclass(frozen=True)
class Orchestration:
    """How a simulation moves its messages: what `modes` compares."""

    name: str
    reply_poll_s: float  # the server's look for replies (simulation grid)
    dispatch_s: float  # the simulation engine's look for messages to hand out
    evaluate_with_train: bool  # federation.evaluate_with_train

    @property
    def overrides(self) -> list[str]:
        return [f"federation.evaluate_with_train={str(self.evaluate_with_train).lower()}"]


MODES = {
    "flower": Orchestration("flower", 0.1, simulation_dispatch.FLOWER_DISPATCH_INTERVAL_S, False),
    "mammofl": Orchestration(
        "mammofl",
        server.federation.SIMULATION_PULL_INTERVAL_S,
        simulation_dispatch.SIMULATION_DISPATCH_INTERVAL_S,
        True,
    ),
}


def parse_modes(value: str) -> list[Orchestration]:
    """`flower,mammofl` -> those orchestrations, in that order, each once."""
    names = [v.strip() for v in value.strip("[]").split(",") if v.strip()]
    unknown = [n for n in names if n not in MODES]
    if not names or unknown or len(set(names)) != len(names):
        raise ConfigError(f"modes={value}: distinct names of {', '.join(MODES)}")
    return [MODES[n] for n in names]


def phase1_overrides(options: dict[str, str]) -> list[str]:
    """`gan_epochs` and `synpre_epochs` as hydra overrides; `preset` keeps the preset's."""
    overrides = []
    for option, key in PHASE1.items():
        value = options[option]
        if value == "preset":
            continue
        if not value.isdigit() or int(value) < 1:
            raise ConfigError(f"{option}={value}: a whole number >= 1, or preset")
        overrides.append(f"{key}={int(value)}")
    return overrides


def site_table(count: int) -> str:
    """A hydra override of the preset's site table: `count` phantom sites, the built-in styles
    in turn (sites of one style get different patients: the workspace seeds them by index)."""
    rows = [
        f"{{name:site-{k + 1:02d},phantom_style:{PHANTOM_STYLES[k % len(PHANTOM_STYLES)]}}}"
        for k in range(count)
    ]
    return f"sites=[{','.join(rows)}]"


@contextmanager
def tree_peak_sampler(interval: float = 0.5) -> Iterator[list[int]]:
    """Samples this process tree's resident memory in a thread; yields a one-item list that
    holds the peak in bytes once the block ends."""
    peak = [0]
    stop = threading.Event()
    me = psutil.Process()

    def sample() -> None:
        while not stop.wait(interval):
            peak[0] = max(peak[0], tree_rss(me)[0])

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        stop.set()
        thread.join()


@contextmanager
def intervals(mode: Orchestration) -> Iterator[None]:
    """The server's reply poll and the engine's dispatch interval for the runs in this block
    (the ServerApp and the simulation engine run in this process)."""
    before = (
        server.federation.SIMULATION_PULL_INTERVAL_S,
        simulation_dispatch.SIMULATION_DISPATCH_INTERVAL_S,
    )
    server.federation.SIMULATION_PULL_INTERVAL_S = mode.reply_poll_s
    simulation_dispatch.SIMULATION_DISPATCH_INTERVAL_S = mode.dispatch_s
    try:
        yield
    finally:
        (
            server.federation.SIMULATION_PULL_INTERVAL_S,
            simulation_dispatch.SIMULATION_DISPATCH_INTERVAL_S,
        ) = before


def prepare_sites(base: Sequence[str], count: int, out_dir: Path) -> None:
    """The phantom downloads and every site's prepared patches, before any timed run: each run's
    set-up then holds the same work (status, MCGANs, SynPre, base model), whatever ran before."""
    config = compose_federated_config([*base, f"out_dir={out_dir}", site_table(count)])
    prepare_workspace(config)
    for entry in config.sites:
        facts = facts_from_entry(entry, config, state_dir=out_dir / "not-used")  # data only
        ensure_prepared(facts, config.site_data)


def run_one(base: Sequence[str], count: int, mode: Orchestration, out_dir: Path) -> RunTiming:
    """One Flower simulation of `count` sites orchestrated as `mode`, in a fresh run dir."""
    run_dir = out_dir / f"n{count}_{mode.name}"
    overrides = [*base, *mode.overrides, f"out_dir={out_dir}", f"run_dir={run_dir}"]
    overrides.append(site_table(count))
    config = compose_federated_config(overrides)
    # held for the run, as `mammofl federate` holds it: no other command resets or writes the
    # run dir meanwhile (its site ledgers included)
    with output_lock("bench federated", run_dir=run_dir):
        empty_held_folder(run_dir)
        with intervals(mode), tree_peak_sampler() as peak:
            launched = time.monotonic()
            run_flower(config, overrides)
            returned = time.monotonic()
    server_rounds, site_records = read_run_timings(run_dir)
    if not site_records or not server_rounds:
        raise ConfigError(f"{run_dir}: no timing records (did the run end before round 1?)")
    workers = len({r["pid"] for r in site_records})
    rounds = round_overheads(server_rounds, site_records, workers)
    first = min(r["start"] for r in site_records)
    return RunTiming(
        sites=count,
        mode=mode.name,
        workers=workers,
        rounds=rounds,
        total=totals(rounds),
        memory=worker_memory(site_records),
        tree_peak=peak[0],
        startup=first - launched,
        setup=server_rounds[0]["start"] - first,
        end=returned - server_rounds[-1]["end"],
    )


def describe(base: Sequence[str], count: int, shrunk: Sequence[str]) -> str:
    """The machine and what every run runs (the rounds' work, and phase 1 if changed)."""
    config = compose_federated_config([*base, site_table(count)])
    preset = compose_federated_config([base[0], site_table(count)])
    phase1 = (
        f"phase 1 set to save time ({' '.join(shrunk)}; preset: MCGAN "
        f"{preset.gan.train.epochs} epochs, SynPre {preset.synpre.epochs}): not measured, the "
        "rounds' work is the preset's"
        if shrunk
        else "phase 1 as the preset"
    )
    return (
        f"federated on {cpu_name()}, {os.cpu_count()} CPUs, no GPU used; {base[0]}: "
        f"{config.federation.rounds} rounds x {config.federation.local_epochs} local epochs, "
        f"batch {config.train.batch_size}, engine {config.train.engine}, "
        f"{config.simulation.num_cpus:g} CPU per ClientApp; {phase1}; "
        f"overrides: {' '.join(base[1:]) or '-'}"
    )


def main(argv: Sequence[str]) -> int:
    given, rest = split_options(argv, tuple(DEFAULTS))
    options = {**DEFAULTS, **given}
    counts, modes = parse_counts(options["sites"]), parse_modes(options["modes"])
    shrunk = phase1_overrides(options)
    base = [f"experiment={options['preset']}", *shrunk, *rest]
    print(describe(base, max(counts), shrunk))
    out_dir = Path(options["out_dir"])
    started = time.monotonic()
    prepare_sites(base, max(counts), out_dir)
    print(f"workspace: {max(counts)} phantom sites prepared in {time.monotonic() - started:.0f} s")
    runs = []
    for count in counts:
        for mode in modes:
            print(f"running {count} sites, {mode.name} orchestration ...", flush=True)
            runs.append(run_one(base, count, mode, out_dir))
    print_tables(runs)
    return 0


if __name__ == "__main__":
    from simulations.cli import script_main

    script_main("bench_federated", main)
