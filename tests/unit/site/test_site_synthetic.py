"""A site's synthetic patches: a DP-MCGAN is charged to the site's ledger before DP-SGD plans
its share; near-copies of real patches never leave the site."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from common.site import synthetic
from common.site.facts import simulated_site
from common.site.runtime import SiteRuntime
from tests.conftest import tiny_federated_config


def test_dp_mcgan_is_composed_into_the_site_budget(tiny_workspace: Path, tmp_path: Path) -> None:
    config = tiny_federated_config(
        tiny_workspace,
        f"run_dir={tmp_path}",
        "gan.dp.enabled=true",
        "gan.dp.target_epsilon=2",
        "gan.train.batch_size=4",  # a DP batch may not exceed N (4 patches here)
    )
    runtime = SiteRuntime(simulated_site(config, 0), config)
    produced = runtime.synthesize(8)
    assert produced.provenance["dp"] and produced.provenance["formal_guarantee"]
    status = runtime.status()
    assert 0 < status["gan_epsilon"] <= 2.0 and status["synthetic_guarantee"].startswith("formal")
    assert [e["kind"] for e in status["ledger"]["events"]] == ["dp-gan"]
    plan = runtime.plan()  # DP-SGD gets what the GAN left
    full = SiteRuntime(
        simulated_site(tiny_federated_config(tiny_workspace, f"run_dir={tmp_path / 'b'}"), 0),
        config,
    )
    assert plan.noise_multiplier > full.plan().noise_multiplier
    runtime.synthesize(8)  # reused, never charged twice
    assert len(runtime.status()["ledger"]["events"]) == 1


def test_near_copies_are_regenerated(
    tiny_workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tiny_federated_config(tiny_workspace, f"run_dir={tmp_path}")
    runtime = SiteRuntime(simulated_site(config, 0), config)
    real = runtime._data().train.pixels
    calls = []
    original = synthetic._sample

    def copying_generator(trainer, labels, rng):  # type: ignore[no-untyped-def]
        calls.append(len(labels))
        if len(calls) == 1:  # the first draw memorised the training patches: exact copies
            return np.stack([real[i % len(real)] for i in range(len(labels))])
        return original(trainer, labels, rng)

    monkeypatch.setattr(synthetic, "_sample", copying_generator)
    produced = runtime.synthesize(8)
    assert len(calls) >= 2 and calls[1] > 0  # the flagged ones were drawn again
    for patch in produced.pixels:
        assert not any(np.array_equal(patch, r) for r in real)


def test_a_dp_mcgan_retrained_from_scratch_is_charged_again(
    tiny_workspace: Path, tmp_path: Path
) -> None:
    import shutil

    config = tiny_federated_config(
        tiny_workspace,
        f"run_dir={tmp_path}",
        "gan.dp.enabled=true",
        "gan.dp.target_epsilon=1",
        "gan.train.batch_size=4",
    )
    runtime = SiteRuntime(simulated_site(config, 0), config)
    runtime.synthesize(4)
    shutil.rmtree(runtime.facts.state_dir / "gan")  # checkpoints lost: a new run on the data
    runtime.synthesize(4)
    kinds = [e["kind"] for e in runtime.status()["ledger"]["events"]]
    assert kinds == ["dp-gan", "dp-gan"]


def test_a_later_run_with_another_seed_reuses_the_sites_mcgan_and_its_charge(
    tiny_workspace: Path, tmp_path: Path
) -> None:
    """A site's MCGAN is its own: a later run (another seed, other GAN learning rates) loads
    it and its charge, never refuses it (a new state dir would reset the site's ledger)."""
    first = tiny_federated_config(
        tiny_workspace,
        f"run_dir={tmp_path}",
        "gan.dp.enabled=true",
        "gan.dp.target_epsilon=2",
        "gan.train.batch_size=4",
    )
    SiteRuntime(simulated_site(first, 0), first).synthesize(4)
    later = tiny_federated_config(
        tiny_workspace,
        f"run_dir={tmp_path}",
        "gan.dp.enabled=true",
        "gan.dp.target_epsilon=2",
        "gan.train.batch_size=4",
        f"seed={first.seed + 1}",
        "gan.train.lr_generator=5e-5",
    )
    runtime = SiteRuntime(simulated_site(later, 0), later)
    runtime.synthesize(4)
    assert [e["kind"] for e in runtime.status()["ledger"]["events"]] == ["dp-gan"]


def _dp_gan_site(workspace: Path, run: Path, *overrides: str) -> SiteRuntime:
    """A tiny site whose MCGAN trains with DP (epsilon 2, batch 4)."""
    config = tiny_federated_config(
        workspace,
        f"run_dir={run}",
        "gan.dp.enabled=true",
        "gan.dp.target_epsilon=2",
        "gan.train.batch_size=4",
        *overrides,
    )
    return SiteRuntime(simulated_site(config, 0), config)


def test_a_settled_dp_mcgan_resumed_from_an_earlier_epoch_charges_the_epochs_again(
    tiny_workspace: Path, tmp_path: Path
) -> None:
    """Its later checkpoints gone, a finished DP-MCGAN resumes from an earlier epoch: the
    epochs it trains again are a new use of the data (the first run's samples may have left
    the site), charged as a new event, not hidden in the settled first charge."""
    runtime = _dp_gan_site(
        tiny_workspace, tmp_path, "gan.train.epochs=3", "gan.train.checkpoint_every=1"
    )
    runtime.synthesize(4)
    (first,) = runtime.status()["ledger"]["events"]
    assert first["status"] == "settled" and first["steps"] % 3 == 0
    per_epoch = first["steps"] // 3
    checkpoints = sorted((runtime.facts.state_dir / "gan" / "checkpoints").glob("epoch_*.pt"))
    for later in checkpoints[1:]:  # epochs 2 and 3 lost: resumes from epoch 1
        later.unlink()
    runtime.synthesize(4)
    events = runtime.status()["ledger"]["events"]
    assert [(e["kind"], e["status"], e["steps"]) for e in events] == [
        ("dp-gan", "settled", 3 * per_epoch),
        ("dp-gan", "settled", 2 * per_epoch),
    ]
    runtime.synthesize(4)  # finished: reused, nothing charged
    assert len(runtime.status()["ledger"]["events"]) == 2


def test_a_dp_mcgan_checkpoint_with_no_charge_on_record_is_charged_in_full(
    tiny_workspace: Path, tmp_path: Path
) -> None:
    """A site whose ledger was restored from a backup older than its DP-MCGAN: the finished
    checkpoint is on disk, its charge on no record; reusing it is charged as the whole run
    (charging the 0 epochs left would let its samples leave uncharged)."""
    from common.privacy.ledger import PrivacyLedger
    from common.site.synthetic import train_site_gan

    runtime = _dp_gan_site(tiny_workspace, tmp_path)
    config = runtime.config
    runtime.synthesize(4)
    (charged,) = runtime.status()["ledger"]["events"]
    restored = PrivacyLedger(delta=config.privacy.delta, accountant=config.privacy.accountant)
    train = runtime._data().train.at_size(config.gan.model.image_size)
    train_site_gan(runtime.facts, config, train, restored, runtime.budget, lambda _: None)
    (event,) = restored.events
    assert (event.kind, event.status, event.steps) == ("dp-gan", "settled", charged["steps"])
