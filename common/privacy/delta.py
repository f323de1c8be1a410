"""delta against N, the number of privacy units a run samples (patches, or patients).

An (epsilon, delta) guarantee with delta >= 1/N is met by a mechanism that publishes one of the
N records verbatim (each with probability 1/N), so it protects no one; common practice asks for
delta much smaller than 1/N (Dwork & Roth 2014, "The Algorithmic Foundations of Differential
Privacy", section 2.3). Every DP path (`mammofl plan`, `mammofl train`, a federated site, the
DP-MCGAN) calls `check_delta` with the N of the unit it actually samples, before using the data.
"""

from __future__ import annotations

import logging
import math

from common.errors import ConfigError, PrivacyError

log = logging.getLogger(__name__)

PLURALS = {"patch": "patches", "patient": "patients"}
WARN_FACTOR = 10  # warn when delta > 1/(WARN_FACTOR N)


def _units_text(units: int, unit: str) -> str:
    return f"{units} {PLURALS.get(unit, unit + 's') if units != 1 else unit}"


def suggested_delta(units: int) -> float:
    """A power of ten at or below 1/(10 N): the largest such delta `check_delta` takes silently."""
    return float(10 ** math.floor(math.log10(1.0 / (WARN_FACTOR * units))))


def delta_note(
    delta: float, units: int, unit: str = "patch", *, key: str = "privacy.delta"
) -> str | None:
    """`check_delta` without the logging: raises at delta >= 1/N, returns the warning text when
    delta > 1/(10 N), else None (for reports that carry the note themselves)."""
    if units < 1:
        raise ConfigError("cannot plan privacy for an empty training set")
    if delta * units >= 1.0:
        raise PrivacyError(
            f"{key}={delta} >= 1/N with N={_units_text(units, unit)} (the privacy unit: "
            f"{unit}): one {unit} released verbatim would already meet the (epsilon, delta) "
            f"definition, so the guarantee would be vacuous; lower {key} below "
            f"1/N = {1.0 / units:.4g}, e.g. {key}={suggested_delta(units):g} "
            "(Dwork & Roth 2014, section 2.3)"
        )
    if delta * units * WARN_FACTOR > 1.0:
        return (
            f"{key}={delta} is above 1/(10 N) = {1.0 / (WARN_FACTOR * units):.4g} with "
            f"N={_units_text(units, unit)}: common practice is delta << 1/N (Dwork & Roth "
            f"2014, section 2.3), e.g. {key}={suggested_delta(units):g}"
        )
    return None


def check_delta(
    delta: float, units: int, unit: str = "patch", *, key: str = "privacy.delta"
) -> str | None:
    """Refuse delta >= 1/N (`PrivacyError`); warn (logged, and returned) when delta > 1/(10 N);
    else None.

    `units`: N, the privacy units the run samples (training patches, or patients under
    patient-level DP); `unit`: their name; `key`: the config key that set delta.

    >>> check_delta(1e-5, 1104) is None
    True
    >>> check_delta(0.5, 12)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    common.errors.PrivacyError: privacy.delta=0.5 >= 1/N with N=12 patches ...
    """
    note = delta_note(delta, units, unit, key=key)
    if note is not None:
        log.warning(note)
    return note
