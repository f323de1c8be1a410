"""Under DP, one record's presence in a Poisson batch changes no other record's draws.

The subsampled Gaussian's analysis assumes neighbouring datasets differ in one clipped term. The
MCGAN's augmentation, smoothed targets and fakes come from one stream seeded with the run's seed
(known to the server), so a batch-size-dependent use of that stream would shift every later
record's draws and the unclipped fake batch whenever one record is sampled.
"""

from __future__ import annotations

from pathlib import Path

import torch

from common.config.gan_schema import GanTrainConfig
from common.training.gan_draws import draw_step
from tests.unit.gan.helpers import trainer


def _draw(indices: list[int], population: int | None) -> tuple[dict[int, torch.Tensor], ...]:
    generator = torch.Generator().manual_seed(7)
    steps = [
        draw_step(
            torch.tensor(indices, dtype=torch.long), generator, GanTrainConfig(), 4, 6, population
        )
        for _ in range(2)
    ]
    per_record = {
        i: torch.cat([s.augment[k] for s in steps] + [s.targets[k : k + 1] for s in steps])
        for k, i in enumerate(indices)
    }
    return per_record, torch.cat([s.z for s in steps]), torch.cat([s.fake_labels for s in steps])


def test_dp_draws_do_not_depend_on_who_else_is_sampled() -> None:
    with_zero, z_with, labels_with = _draw([0, 3, 5, 9], population=12)
    without_zero, z_without, labels_without = _draw([3, 5, 9], population=12)
    for record in (3, 5, 9):
        assert torch.equal(with_zero[record], without_zero[record])
    assert torch.equal(z_with, z_without) and torch.equal(labels_with, labels_without)


def test_without_population_the_stream_shifts_as_the_paper_baseline_draws() -> None:
    # the non-DP path keeps the baseline's order (batch-sized draws): the shift is visible
    with_zero, z_with, _ = _draw([0, 3, 5, 9], population=None)
    without_zero, z_without, _ = _draw([3, 5, 9], population=None)
    assert not torch.equal(with_zero[3], without_zero[3])
    assert not torch.equal(z_with, z_without)


def test_dp_trainer_draws_per_record(tmp_path: Path) -> None:
    t = trainer(tmp_path, dp=True)
    state = t.rng.get_state()
    a = t._step_draws(torch.tensor([0, 2, 4]))
    t.rng.set_state(state)
    b = t._step_draws(torch.tensor([2, 4]))
    assert torch.equal(a.augment[1:], b.augment) and torch.equal(a.targets[1:], b.targets)
    assert torch.equal(a.z, b.z) and torch.equal(a.fake_labels, b.fake_labels)
    assert len(a.z) == len(b.z) == t.config.train.batch_size  # a fixed fake batch under DP
