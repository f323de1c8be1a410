import torch

from common.training.selection import EpochRecord, EpochSelector


def _offer(
    selector: EpochSelector, epoch: int, auprc: float, loss: float, eps: float | None
) -> bool:
    record = EpochRecord(epoch, None, loss, auprc, eps, selector.eligible(eps))
    return selector.offer(record, lambda: {"w": torch.tensor(float(epoch))})


def test_best_auprc_then_lower_loss() -> None:
    selector = EpochSelector()
    _offer(selector, 1, 0.6, 0.5, None)
    _offer(selector, 2, 0.7, 0.9, None)
    _offer(selector, 3, 0.7, 0.4, None)
    _offer(selector, 4, 0.65, 0.1, None)
    assert selector.best is not None and selector.best.epoch == 3
    assert float(selector.best_state["w"]) == 3.0


def test_only_epochs_near_the_target_epsilon_are_eligible() -> None:
    selector = EpochSelector(target_epsilon=6.0)
    assert not _offer(selector, 1, 0.99, 0.1, 2.0)  # spent far less than reported
    assert _offer(selector, 2, 0.5, 0.1, 5.0)
    assert not _offer(selector, 3, 0.99, 0.1, 6.4)  # above 1.05 x target
    assert selector.best is not None and selector.best.epoch == 2


def test_nan_auprc_never_wins() -> None:
    selector = EpochSelector()
    assert not _offer(selector, 1, float("nan"), 0.1, None)
    assert _offer(selector, 2, 0.5, 0.3, None)
