"""`mammofl bench federated`'s pure parts: the critical path, the overhead of a round from timing
records, the timing files, and the benchmark's option parsing and site table."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest

import server.federation
from common.config.compose import compose_federated_config
from common.errors import ConfigError, OutputError
from common.federated import simulation_dispatch
from common.federated.overhead import (
    EXACT_UP_TO,
    critical_path,
    round_overheads,
    totals,
    worker_memory,
)
from common.federated.timing import (
    TIMING_FILE,
    RoundClock,
    append_timing,
    message_record,
    read_run_timings,
    read_timings,
)
from common.runs.output_lock import output_lock
from simulations.bench_federated import (
    DEFAULTS,
    MODES,
    parse_counts,
    parse_modes,
    phase1_overrides,
    run_one,
    site_table,
)
from simulations.cli import BENCHMARKS


def brute_force_makespan(jobs: list[float], workers: int) -> float:
    return min(
        max(sum(j for j, w in zip(jobs, assignment, strict=True) if w == k) for k in range(workers))
        for assignment in itertools.product(range(workers), repeat=len(jobs))
    )


@pytest.mark.parametrize(
    ("jobs", "workers", "expected"),
    [
        ([], 2, 0.0),
        ([1.0], 2, 1.0),
        ([1.0, 1.0, 1.0], 2, 2.0),  # 3 equal jobs on 2 workers: 2, not the bound 1.5
        ([3.0, 3.0, 2.0, 2.0, 2.0], 2, 6.0),  # greedy gives 7
        ([1.0, 2.0, 3.0], 1, 6.0),  # one worker: the sum
        ([0.5] * 10, 2, 2.5),
        ([4.0, 1.0, 1.0], 3, 4.0),  # the longest job bounds it
    ],
)
def test_critical_path_is_the_best_schedule(
    jobs: list[float], workers: int, expected: float
) -> None:
    assert critical_path(jobs, workers) == pytest.approx(expected)


def test_critical_path_matches_brute_force() -> None:
    jobs = [0.31, 0.17, 0.52, 0.08, 0.44, 0.29, 0.11]
    for workers in (1, 2, 3):
        assert critical_path(jobs, workers) == pytest.approx(brute_force_makespan(jobs, workers))


def test_critical_path_beyond_exact_is_the_lower_bound() -> None:
    jobs = [1.0] * (EXACT_UP_TO + 1)
    assert critical_path(jobs, 2) == pytest.approx(len(jobs) / 2)
    with pytest.raises(ValueError, match="at least one"):
        critical_path([1.0], 0)


def site(name: str, message: str, start: float, end: float, pid: int = 1) -> dict[str, object]:
    record = {"site": name, "message": message, "start": start, "end": end, "pid": pid}
    return {**record, "peak_rss": 2**30 * pid, "cold": False}


# one round on 2 workers: train [10.0, 11.0], central evaluation, evaluate [11.1, 11.4], checkpoint
ROUND = {
    "round": 2,
    "start": 10.0,
    "end": 11.5,
    "sites": 3,
    "phases": {
        "train": [10.0, 11.02],
        "exchange:train": [10.0, 11.0],
        "central_evaluation": [11.02, 11.1],
        "site_evaluation": [11.1, 11.4],
        "exchange:evaluate": [11.1, 11.4],
        "checkpoint": [11.4, 11.45],
    },
}
RECORDS = [
    site("a", "train", 10.05, 10.45, pid=1),  # 0.4
    site("b", "train", 10.05, 10.35, pid=2),  # 0.3
    site("c", "train", 10.4, 10.9, pid=2),  # 0.5; best schedule: {0.3, 0.4} and {0.5}: 0.7
    site("a", "evaluate", 11.15, 11.25, pid=1),  # 0.1
    site("b", "evaluate", 11.15, 11.2, pid=2),  # 0.05
    site("c", "evaluate", 11.2, 11.3, pid=2),  # 0.1
    site("a", "train", 20.0, 21.0, pid=1),  # another round: not this one's
]


def test_round_overhead_from_records() -> None:
    (r,) = round_overheads([ROUND], RECORDS, workers=2)
    assert r.round == 2 and r.wall == pytest.approx(1.5)
    train, evaluate = r.exchanges
    assert sorted(train.site_seconds) == pytest.approx([0.3, 0.4, 0.5])
    assert train.critical(2) == pytest.approx(0.7)
    assert evaluate.critical(2) == pytest.approx(0.15)
    assert r.compute_sum == pytest.approx(1.2 + 0.25)
    assert r.compute_max == pytest.approx(0.5 + 0.1)
    assert r.critical == pytest.approx(0.85)
    assert r.overhead == pytest.approx(1.5 - 0.85)
    assert r.ratio == pytest.approx((1.5 - 0.85) / 0.85)
    assert train.dispatch == pytest.approx(0.05) and train.collect == pytest.approx(0.1)
    assert evaluate.dispatch == pytest.approx(0.05) and evaluate.collect == pytest.approx(0.1)
    assert train.scheduling(2) == pytest.approx(1.0 - 0.05 - 0.1 - 0.7)
    assert r.messaging == pytest.approx((1.0 - 0.7) + (0.3 - 0.15))
    assert r.server == pytest.approx(
        {"central_evaluation": 0.08, "checkpoint": 0.05, "aggregation": 0.02}
    )
    assert r.other == pytest.approx(r.overhead - r.messaging - 0.15)


def test_totals_are_ratios_of_sums() -> None:
    slow = {**ROUND, "start": 10.0, "end": 12.5}  # the same compute, one more second of wall
    rounds = round_overheads([ROUND, slow], RECORDS, workers=2)
    total = totals(rounds)
    assert total.rounds == 2 and total.wall == pytest.approx(4.0)
    assert total.critical == pytest.approx(1.7)
    assert total.ratio == pytest.approx((4.0 - 1.7) / 1.7)
    assert total.server["checkpoint"] == pytest.approx(0.1)
    assert math.isinf(totals([]).ratio)


def test_worker_memory_per_process() -> None:
    memory = worker_memory(RECORDS)
    assert [(m.pid, m.peak_rss, m.sites) for m in memory] == [
        (1, 2**30, ("a",)),
        (2, 2**31, ("b", "c")),
    ]


def test_timing_files_round_trip(tmp_path: Path) -> None:
    clock = RoundClock(tmp_path / "run" / "server" / TIMING_FILE)
    with clock.phase("outside"):  # no round open: not recorded
        pass
    clock.start_round(1)
    with clock.phase("train"), clock.phase("exchange:train"):
        pass
    clock.end_round(sites=3)
    state = tmp_path / "run" / "sites" / "site-a" / "state"
    append_timing(state / TIMING_FILE, message_record("site-a", "train", 1.0, 2.0, cold=True))
    rounds, records = read_run_timings(tmp_path / "run")
    assert [r["round"] for r in rounds] == [1] and rounds[0]["sites"] == 3
    assert set(rounds[0]["phases"]) == {"train", "exchange:train"}
    assert rounds[0]["start"] <= rounds[0]["phases"]["train"][0] <= rounds[0]["end"]
    (record,) = records
    assert record["site"] == "site-a" and record["end"] - record["start"] == 1.0
    assert record["peak_rss"] > 0 and record["cold"] is True
    assert read_timings(tmp_path / "missing.jsonl") == []


def test_counts_and_modes_parse() -> None:
    assert parse_counts("3,5,10") == [3, 5, 10] and parse_counts("[4]") == [4]
    assert [m.name for m in parse_modes("mammofl,flower")] == ["mammofl", "flower"]
    for bad in ("1,3", "3,3", "three", ""):
        with pytest.raises(ConfigError):
            parse_counts(bad)
    for bad in ("", "fast", "flower,flower"):
        with pytest.raises(ConfigError):
            parse_modes(bad)


def test_the_modes_compared_are_flowers_defaults_and_mammofls() -> None:
    flower, ours = MODES["flower"], MODES["mammofl"]
    assert (flower.reply_poll_s, flower.dispatch_s, flower.evaluate_with_train) == (0.1, 0.1, False)
    assert ours.reply_poll_s == server.federation.SIMULATION_PULL_INTERVAL_S
    assert ours.dispatch_s == simulation_dispatch.SIMULATION_DISPATCH_INTERVAL_S
    default = compose_federated_config(["experiment=federated/phantom"]).federation
    assert ours.evaluate_with_train == default.evaluate_with_train is True
    evaluated = compose_federated_config(["experiment=federated/phantom", *flower.overrides])
    assert evaluated.federation.evaluate_with_train is False


def test_phase1_overrides() -> None:
    assert phase1_overrides(DEFAULTS) == ["gan.train.epochs=5", "synpre.epochs=1"]
    kept = {**DEFAULTS, "gan_epochs": "preset", "synpre_epochs": "preset"}
    assert phase1_overrides(kept) == []
    with pytest.raises(ConfigError, match="gan_epochs"):
        phase1_overrides({**DEFAULTS, "gan_epochs": "0"})


def test_site_table_composes_n_phantom_sites() -> None:
    config = compose_federated_config(["experiment=federated/phantom", site_table(10)])
    assert [s.name for s in config.sites] == [f"site-{k:02d}" for k in range(1, 11)]
    styles = [s.phantom_style for s in config.sites]
    assert styles[:4] == ["site-a", "site-b", "site-c", "site-a"]


def test_registered_as_a_benchmark() -> None:
    assert BENCHMARKS["federated"] == "simulations.bench_federated"


def test_a_timing_that_cannot_be_written_fails_nothing(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("")  # a file where the folder should be
    append_timing(blocked / "state" / TIMING_FILE, {"site": "a"})
    assert read_timings(blocked / "state" / TIMING_FILE) == []


def test_a_run_dir_another_command_writes_is_neither_emptied_nor_run(tmp_path: Path) -> None:
    run_dir = tmp_path / "n3_mammofl"  # run_one's own run dir for 3 sites
    ledger = run_dir / "sites" / "site-a" / "state" / "ledger.json"
    ledger.parent.mkdir(parents=True)
    ledger.write_text('{"events": [{"round": 1}]}')
    with output_lock("federate", run_dir=run_dir), pytest.raises(OutputError, match="another"):
        run_one(["experiment=federated/tiny"], 3, MODES["mammofl"], tmp_path)
    assert ledger.is_file()
