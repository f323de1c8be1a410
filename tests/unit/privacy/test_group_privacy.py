"""Group privacy of a per-patch guarantee (k eps, k e^{(k-1) eps} delta); vacuous at delta >= 1."""

from __future__ import annotations

import doctest
import math

import pytest

from common.privacy import group_privacy
from common.privacy.group_privacy import group_guarantee


def test_doctests() -> None:
    assert doctest.testmod(group_privacy).failed == 0


def test_group_of_one_is_the_guarantee_itself() -> None:
    g = group_guarantee(1.5, 1e-5, 1)
    assert g.epsilon == 1.5 and math.isclose(10**g.log10_delta, 1e-5) and not g.vacuous


def test_formula_and_vacuity() -> None:
    g = group_guarantee(0.5, 1e-6, 3)
    assert g.epsilon == 1.5
    assert math.isclose(10**g.log10_delta, 3 * math.exp(1.0) * 1e-6)
    assert not g.vacuous
    # the paper's per-patch epsilon 6 for the largest patient of the released train (14 patches)
    assert group_guarantee(6.0, 1e-4, 14).vacuous
    # no overflow at epsilon 60
    assert group_guarantee(60.0, 1e-4, 14).delta_text().startswith("vacuous")


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        group_guarantee(1.0, 1e-4, 0)
