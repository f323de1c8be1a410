"""The site runtime on a real (tiny) phantom site: only training patients, budget refusals that
charge nothing, delta against N, a status with nothing private in it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from common.data.splits import read_prepared_split
from common.errors import PrivacyError
from common.federated import protocol as p
from common.federated.model import initial_model
from common.privacy.ledger import PrivacyBudgetExceeded, PrivacyLedger
from common.site.budget import load_or_plan
from common.site.facts import simulated_site
from common.site.runtime import SiteRuntime
from common.training.engine import state_fingerprint, trainable_state
from tests.conftest import tiny_federated_config
from tests.killed_writes import killed_mid_write


def _runtime(workspace: Path, run: Path, *overrides: str) -> SiteRuntime:
    config = tiny_federated_config(workspace, f"run_dir={run}", *overrides)
    return SiteRuntime(simulated_site(config, 0), config)


def _start(runtime: SiteRuntime) -> tuple[dict[str, np.ndarray], str]:
    runtime.initialize()
    model = initial_model(runtime.config, runtime.device)
    sha = runtime.set_base_model({k: v.numpy() for k, v in model.state_dict().items()})
    return {k: v.numpy() for k, v in trainable_state(model).items()}, sha


def test_site_trains_only_on_its_training_patients(tiny_workspace: Path, tmp_path: Path) -> None:
    runtime = _runtime(tiny_workspace, tmp_path)
    runtime.initialize()
    data = runtime._data()
    test_patients = set(read_prepared_split(runtime.facts.data_dir, "test").patients)
    used = set(data.train.patch_set.patients) | set(data.validation.patch_set.patients)
    assert test_patients and not used & test_patients
    assert not set(data.train.patch_set.patients) & set(data.validation.patch_set.patients)
    assert {r.site for r in data.train.patch_set.records} == {runtime.facts.name}


def test_round_beyond_the_cap_is_refused_and_not_charged(
    tiny_workspace: Path, tmp_path: Path
) -> None:
    runtime = _runtime(tiny_workspace, tmp_path)
    trainable, sha = _start(runtime)
    for round_number in (1, 2, 3):  # the planned rounds fit exactly
        result = runtime.train_round(round_number, trainable, sha)
        trainable = result.trainable
        assert result.epsilon <= runtime.budget
        assert set(result.event) >= p.EVENT_KEYS and result.weight == 1.0
    ledger_file = runtime.facts.state_dir / "ledger.json"
    before = ledger_file.read_bytes()
    with pytest.raises(PrivacyBudgetExceeded):
        runtime.train_round(4, trainable, sha)
    assert ledger_file.read_bytes() == before


def test_site_cap_below_the_run_budget_governs(tiny_workspace: Path, tmp_path: Path) -> None:
    runtime = _runtime(tiny_workspace, tmp_path, "sites.0.epsilon_cap=2")
    trainable, sha = _start(runtime)
    assert runtime.budget == 2.0 and runtime.plan().budget == 2.0
    result = runtime.train_round(1, trainable, sha)
    assert result.epsilon < 2.0


def test_delta_not_below_one_over_n_is_refused(tiny_workspace: Path, tmp_path: Path) -> None:
    """Checked when the site opens its data, before any use (a DP-MCGAN included)."""
    runtime = _runtime(tiny_workspace, tmp_path, "privacy.delta=0.5")
    with pytest.raises(PrivacyError, match="1/N"):
        runtime.initialize()
    with pytest.raises(PrivacyError, match="1/N"):
        runtime.synthesize(4)


def test_delta_is_checked_against_the_units_n(
    tiny_workspace: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Under patient-level DP, N is the site's training patients: a delta refused per patch
    (>= 1/patches) stands, with a warning, per patient (< 1/patients); 1/patients is refused.
    The saved plan's own check (load_or_plan) uses the ledger's unit too."""
    counted = _runtime(tiny_workspace, tmp_path / "count")
    counted.initialize()
    rows = counted._data().train.patch_set.patients
    patches, patients = len(rows), len(set(rows))
    assert patients < patches
    between = (1 / patches + 1 / patients) / 2
    per_patch = _runtime(tiny_workspace, tmp_path / "a", f"privacy.delta={between}")
    with pytest.raises(PrivacyError, match=f"1/N with N={patches} patches"):
        per_patch.initialize()
    per_patient = _runtime(
        tiny_workspace, tmp_path / "b", f"privacy.delta={between}", "privacy.unit=patient"
    )
    with caplog.at_level("WARNING", logger="common.privacy.delta"):
        per_patient.initialize()
    assert f"N={patients} patients" in caplog.text and "1/(10 N)" in caplog.text
    refused = _runtime(
        tiny_workspace, tmp_path / "c", f"privacy.delta={1 / patients}", "privacy.unit=patient"
    )
    with pytest.raises(PrivacyError, match=f"1/N with N={patients} patients"):
        refused.initialize()
    ledger = PrivacyLedger(delta=1 / patients, unit="patient")
    with pytest.raises(PrivacyError, match=f"1/N with N={patients} patients"):
        load_or_plan(tmp_path / "plan.json", refused.config, ledger, patients, 6.0)
    assert not (tmp_path / "plan.json").exists()


def test_exact_count_only_when_the_site_opted_in(tiny_workspace: Path, tmp_path: Path) -> None:
    runtime = _runtime(tiny_workspace, tmp_path)
    trainable, sha = _start(runtime)
    with pytest.raises(PrivacyError, match="opt in"):
        runtime.train_round(1, trainable, sha, weighting="examples")


def test_status_reveals_nothing_private(tiny_workspace: Path, tmp_path: Path) -> None:
    runtime = _runtime(tiny_workspace, tmp_path)
    status = runtime.initialize()
    p.check_status(status)
    text = json.dumps(status)
    assert str(runtime.facts.data_dir) not in text and str(tmp_path) not in text
    n = len(runtime._data().train.patch_set)
    assert f'"{n}"' not in text and f": {n}," not in text


def test_seeded_noise_needs_the_sites_consent(tiny_workspace: Path, tmp_path: Path) -> None:
    """The run config (the server's) cannot switch a site to seeded noise on its own."""
    import dataclasses

    runtime = _runtime(tiny_workspace, tmp_path, "privacy.seeded_noise=true")
    assert runtime.facts.noise_seed is not None  # a simulation's launcher consents for all
    runtime.facts = dataclasses.replace(runtime.facts, noise_seed=None)  # a deployed site
    trainable, sha = _start(runtime)
    with pytest.raises(PrivacyError, match="did not allow"):
        runtime.train_round(1, trainable, sha)
    assert runtime.status()["ledger"]["events"] == []


def test_node_config_needs_the_sites_own_cap_and_seed() -> None:
    from common.errors import ConfigError
    from common.site.facts import facts_from_node_config

    base = {"site-name": "h1", "data-dir": "/d", "state-dir": "/s"}
    with pytest.raises(ConfigError, match="epsilon-cap"):
        facts_from_node_config(base)
    facts = facts_from_node_config({**base, "epsilon-cap": 4})
    assert facts.epsilon_cap == 4.0 and facts.noise_seed is None
    assert not facts.allow_non_dp_synthetic and not facts.share_exact_count
    assert not facts.share_small_set_metrics
    with pytest.raises(ConfigError, match="noise-seed"):
        facts_from_node_config({**base, "epsilon-cap": 4, "seeded-noise": "true"})
    # TOML gives a bool; a mistyped yes/no or seed is refused, not read as "no" or a traceback
    capped = {**base, "epsilon-cap": 4}
    assert facts_from_node_config({**capped, "allow-non-dp-synthetic": True}).allow_non_dp_synthetic
    assert facts_from_node_config(
        {**capped, "share-small-set-metrics": "true"}
    ).share_small_set_metrics
    for key in (
        "allow-non-dp-synthetic",
        "share-exact-count",
        "share-small-set-metrics",
        "seeded-noise",
    ):
        with pytest.raises(ConfigError, match=f"node_config {key}=ture: expected true or false"):
            facts_from_node_config({**capped, key: "ture"})
    with pytest.raises(ConfigError, match="node_config noise-seed=abc: expected a whole number"):
        facts_from_node_config({**capped, "seeded-noise": True, "noise-seed": "abc"})
    assert facts_from_node_config({**capped, "seeded-noise": True, "noise-seed": 7}).noise_seed == 7


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        # a misspelt key would silently be no delta cap at all, or the CPU
        ({"delta_cap": 1e-5}, "unknown key 'delta_cap' \\(did you mean 'delta-cap'\\?\\)"),
        ({"devise": "cuda"}, "unknown key 'devise' \\(did you mean 'device'\\?\\)"),
        ({"device": "gpu"}, "device='gpu': auto, cpu, cuda, cuda:<index> or mps"),
        ({"state-dir": ""}, "state-dir is empty"),
        ({"data-dir": "  "}, "data-dir is empty"),
        ({"site-name": ".."}, "site name '..'"),
        ({"delta-cap": "abc"}, "e.g. node_config delta-cap=1e-5"),
    ],
)
def test_a_node_config_typo_is_refused_by_name(extra: dict[str, object], message: str) -> None:
    from common.errors import ConfigError
    from common.site.facts import facts_from_node_config

    base = {"site-name": "h1", "data-dir": "/d", "state-dir": "/s", "epsilon-cap": 4}
    with pytest.raises(ConfigError, match=message):
        facts_from_node_config({**base, **extra})
    assert facts_from_node_config({**base, "device": "cuda:1"}).device == "cuda:1"
    assert facts_from_node_config({**base, "device": "auto"}).device == "auto"  # loopback's
    # another Flower app's key on the same SuperNode (nothing like mammofl's): not refused
    assert facts_from_node_config({**base, "fds-partition": 3, "raw-dir": ""}).raw_dir is None


def test_no_non_dp_synthetic_data_without_consent(tiny_workspace: Path, tmp_path: Path) -> None:
    runtime = _runtime(tiny_workspace, tmp_path, "sites.0.allow_non_dp_synthetic=false")
    with pytest.raises(PrivacyError, match="allow-non-dp-synthetic"):
        runtime.synthesize(4)


def test_one_operation_at_a_time_per_site(tiny_workspace: Path, tmp_path: Path) -> None:
    """A second process must not charge the same ledger while a round runs (lost charges)."""
    from common.site.lock import site_lock

    runtime = _runtime(tiny_workspace, tmp_path)
    trainable, sha = _start(runtime)
    # another worker's round holds the lock
    with site_lock(runtime.facts.state_dir, wait=False), pytest.raises(PrivacyError, match="still"):
        runtime.train_round(1, trainable, sha)
    assert runtime.train_round(1, trainable, sha).event["round"] == 1


def test_a_lost_ledger_beside_traces_of_training_is_refused(
    tiny_workspace: Path, tmp_path: Path
) -> None:
    """A state dir that trained (a saved plan) but lost ledger.json must not start again from
    an empty ledger: that would understate what the site spent."""
    runtime = _runtime(tiny_workspace, tmp_path)
    trainable, sha = _start(runtime)
    state = runtime.facts.state_dir
    runtime.plan()  # the first plan writes the (empty) ledger before itself
    assert (state / "ledger.json").is_file() and (state / "dp_plan.json").is_file()
    runtime.train_round(1, trainable, sha)
    (state / "ledger.json").unlink()
    again = _runtime(tiny_workspace, tmp_path)
    with pytest.raises(PrivacyError, match=r"ledger.json is missing, but .*dp_plan.json"):
        again.initialize()
    (state / "dp_plan.json").unlink()  # nothing left that says it trained: a new ledger
    assert again.initialize()["epsilon"] == 0.0


def test_the_sites_delta_cap_refuses_a_larger_delta_before_anything_is_spent(
    tiny_workspace: Path, tmp_path: Path
) -> None:
    """The server chooses delta (and a ledger keeps the first one): a site may cap it in its
    node_config, checked when the site loads, before a plan or a ledger exists."""
    import dataclasses

    from common.errors import ConfigError
    from common.site.facts import facts_from_node_config

    base = {"site-name": "h1", "data-dir": "/d", "state-dir": "/s", "epsilon-cap": 4}
    assert facts_from_node_config(base).delta_cap is None
    assert facts_from_node_config({**base, "delta-cap": "1e-5"}).delta_cap == 1e-5
    with pytest.raises(ConfigError, match="delta-cap must be in"):
        facts_from_node_config({**base, "delta-cap": 2})
    expected = (
        "node_config epsilon-cap={}: expected a finite number, e.g. node_config epsilon-cap=6"
    )
    for value in ("six", "nan", "inf"):
        with pytest.raises(ConfigError, match=re.escape(expected.format(value))):
            facts_from_node_config({**base, "epsilon-cap": value})
    runtime = _runtime(tiny_workspace, tmp_path)
    capped = SiteRuntime(dataclasses.replace(runtime.facts, delta_cap=1e-9), runtime.config)
    with pytest.raises(PrivacyError, match=r"privacy.delta=.* above this site's delta-cap=1e-09"):
        capped.initialize()
    assert not (runtime.facts.state_dir / "ledger.json").exists()
    roomy = SiteRuntime(dataclasses.replace(runtime.facts, delta_cap=0.5), runtime.config)
    assert roomy.initialize()["epsilon"] == 0.0


def test_local_evaluation_sends_rounded_scores(tiny_workspace: Path, tmp_path: Path) -> None:
    """A site's local AUROC/AUPRC leave it rounded to 3 decimals (full precision gives the
    validation class counts away: test_metrics)."""
    runtime = _runtime(tiny_workspace, tmp_path)
    trainable, sha = _start(runtime)
    scores = runtime.evaluate(trainable, sha)
    assert set(scores) == {"auroc", "auprc_malignant", "auprc_benign"}
    assert all(v == round(v, 3) for v in scores.values() if v == v)


def test_a_small_validation_set_is_scored_only_with_the_sites_consent(
    tiny_workspace: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Below MIN_RELEASED_CLASS_COUNT patches of a class the rounding no longer hides the
    counts: a deployed site (node_config default) sends no scores and charges no local
    evaluation; a simulated site (the researcher is every party) consents and sends them."""
    import dataclasses
    import logging

    from common.eval.metrics import MIN_RELEASED_CLASS_COUNT

    consenting = _runtime(tiny_workspace, tmp_path / "simulated")
    assert consenting.facts.share_small_set_metrics
    trainable, sha = _start(consenting)
    labels = np.asarray(consenting._data().validation.patch_set.labels)
    assert 0 < int(labels.sum()) < MIN_RELEASED_CLASS_COUNT  # the tiny sites' sets are small
    assert set(consenting.evaluate(trainable, sha)) == {"auroc", "auprc_malignant", "auprc_benign"}

    simulated = _runtime(tiny_workspace, tmp_path / "deployed")
    deployed = SiteRuntime(
        dataclasses.replace(simulated.facts, share_small_set_metrics=False), simulated.config
    )
    trainable, sha = _start(deployed)
    with caplog.at_level(logging.WARNING):
        assert deployed.evaluate(trainable, sha) == {}
    assert "local scores withheld" in caplog.text and "share-small-set-metrics" in caplog.text
    assert deployed.status()["ledger"]["non_dp_uses"] == []  # nothing left the site


def test_seeded_rounds_reproduce_but_a_later_run_on_the_same_state_draws_anew(
    tiny_workspace: Path, tmp_path: Path
) -> None:
    """Seeded research mode: the same round on a fresh state gives the same weights; a later
    run on the same state dir (the ledger grown) draws other batches and noise, so the
    server cannot subtract two updates of one round to cancel their noise."""
    weights = []
    for state in ("a", "b", "a"):  # the third: a later run on the first one's state
        runtime = _runtime(
            tiny_workspace, tmp_path / state, "privacy.seeded_noise=true", "federation.rounds=6"
        )
        trainable, sha = _start(runtime)
        weights.append(runtime.train_round(1, trainable, sha).trainable)
    same = [np.array_equal(weights[0][k], weights[1][k]) for k in weights[0]]
    later = [np.array_equal(weights[0][k], weights[2][k]) for k in weights[0]]
    assert all(same) and not any(later)


def test_a_killed_writers_temporaries_go_when_the_site_next_holds_its_lock(
    tiny_workspace: Path, tmp_path: Path
) -> None:
    """A SuperNode killed while saving the server's model (or the ledger, or an MCGAN
    checkpoint) leaves a temporary beside it, a whole model each time; the next operation of the
    site removes it, and nothing it does not own (the feature cache's)."""
    runtime = _runtime(tiny_workspace, tmp_path)
    trainable, sha = _start(runtime)
    state = runtime.facts.state_dir
    checkpoints = state / "gan" / "checkpoints"
    for target in ("base_model.pt", "ledger.json", "gan/checkpoints/epoch_00040.pt"):
        killed_mid_write(state / target)
    killed_mid_write(state / "features" / "cache.npy")
    left = sorted(p.name for p in state.glob(".*.tmp"))
    assert [n.split(".")[1] for n in left] == ["base_model", "ledger"]
    assert len(list(checkpoints.glob(".epoch_00040.pt.*.tmp"))) == 1
    assert len(list((state / "features").glob(".*.tmp"))) == 1
    runtime.train_round(1, trainable, sha)
    assert not list(state.glob(".*.tmp")) and not list(checkpoints.glob(".*.tmp"))
    assert len(list((state / "features").glob(".*.tmp"))) == 1  # not the lock's to remove
    # the model saved before the kill is whole: the server's, by its fingerprint
    assert state_fingerprint(torch.load(state / "base_model.pt", weights_only=True)) == sha
