"""A DP run never starts without a budget (no target and no cap): nothing trained or charged."""

from __future__ import annotations

import pytest
import torch

from common.config.schema import PrivacyConfig
from common.errors import ConfigError, PrivacyError
from common.privacy.ledger import PrivacyLedger
from common.training.fit import fit
from tests.unit.training.helpers import random_patches, settings, tiny_model


def test_fit_under_dp_without_target_or_cap_is_refused() -> None:
    model = tiny_model("swin")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ledger = PrivacyLedger()
    with pytest.raises(PrivacyError, match="needs a budget"):
        fit(
            model,
            "cached",
            random_patches(8),
            None,
            settings(False),
            epochs=1,
            ledger=ledger,
            selection="last",
        )
    assert ledger.events == []
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_config_with_dp_and_no_target_is_refused() -> None:
    with pytest.raises(ConfigError, match="target_epsilon"):
        PrivacyConfig(enabled=True, target_epsilon=None)
