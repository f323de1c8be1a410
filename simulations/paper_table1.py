"""Table 1 of Osuala et al. 2024 (mean, std over 3 seeds); AUPRC there has benign as positive."""

from __future__ import annotations

# (setting, epsilon) -> test set -> (auroc mean, std, auprc_benign mean, std)
PAPER_TABLE1: dict[tuple[str, float | None], dict[str, tuple[float, float, float, float]]] = {
    ("Real", None): {
        "cbis_ddsm_test": (0.778, 0.001, 0.850, 0.001),
        "bcdr": (0.695, 0.002, 0.726, 0.003),
    },
    ("Syn", None): {
        "cbis_ddsm_test": (0.597, 0.011, 0.696, 0.011),
        "bcdr": (0.566, 0.064, 0.602, 0.048),
    },
    ("SynPre", None): {
        "cbis_ddsm_test": (0.639, 0.016, 0.733, 0.001),
        "bcdr": (0.622, 0.032, 0.660, 0.017),
    },
    ("Real", 1): {
        "cbis_ddsm_test": (0.525, 0.043, 0.640, 0.030),
        "bcdr": (0.487, 0.020, 0.549, 0.020),
    },
    ("Real+Syn", 1): {
        "cbis_ddsm_test": (0.553, 0.040, 0.665, 0.025),
        "bcdr": (0.521, 0.023, 0.573, 0.024),
    },
    ("SynPre+RealFT", 1): {
        "cbis_ddsm_test": (0.661, 0.018, 0.741, 0.007),
        "bcdr": (0.637, 0.026, 0.670, 0.013),
    },
    ("Real", 6): {
        "cbis_ddsm_test": (0.572, 0.031, 0.679, 0.019),
        "bcdr": (0.532, 0.031, 0.579, 0.029),
    },
    ("Real+Syn", 6): {
        "cbis_ddsm_test": (0.617, 0.013, 0.708, 0.015),
        "bcdr": (0.609, 0.027, 0.647, 0.024),
    },
    ("SynPre+RealFT", 6): {
        "cbis_ddsm_test": (0.677, 0.014, 0.752, 0.009),
        "bcdr": (0.647, 0.022, 0.679, 0.009),
    },
    ("Real", 12): {
        "cbis_ddsm_test": (0.596, 0.023, 0.702, 0.013),
        "bcdr": (0.559, 0.033, 0.600, 0.030),
    },
    ("Real+Syn", 12): {
        "cbis_ddsm_test": (0.624, 0.010, 0.704, 0.012),
        "bcdr": (0.625, 0.020, 0.663, 0.012),
    },
    ("SynPre+RealFT", 12): {
        "cbis_ddsm_test": (0.688, 0.012, 0.758, 0.011),
        "bcdr": (0.654, 0.019, 0.685, 0.007),
    },
    ("Real", 20): {
        "cbis_ddsm_test": (0.611, 0.018, 0.715, 0.012),
        "bcdr": (0.581, 0.028, 0.618, 0.026),
    },
    ("Real+Syn", 20): {
        "cbis_ddsm_test": (0.630, 0.003, 0.699, 0.008),
        "bcdr": (0.641, 0.018, 0.685, 0.012),
    },
    ("SynPre+RealFT", 20): {
        "cbis_ddsm_test": (0.697, 0.012, 0.763, 0.012),
        "bcdr": (0.659, 0.017, 0.689, 0.006),
    },
    ("Real", 60): {
        "cbis_ddsm_test": (0.622, 0.014, 0.721, 0.110),
        "bcdr": (0.605, 0.019, 0.640, 0.017),
    },
    ("Real+Syn", 60): {
        "cbis_ddsm_test": (0.629, 0.002, 0.694, 0.005),
        "bcdr": (0.650, 0.013, 0.696, 0.007),
    },
    ("SynPre+RealFT", 60): {
        "cbis_ddsm_test": (0.712, 0.013, 0.776, 0.013),
        "bcdr": (0.671, 0.014, 0.697, 0.004),
    },
}
PAPER_BACKBONE = ("torchvision", "swin_t", "imagenet")


# the paper's test sets' sizes in patches (PAPER.md): a set of another size is another set
PAPER_TEST_SIZES = {"cbis_ddsm_test": 402, "bcdr": 1106}


def paper_values(
    setting: str,
    epsilon: float | None,
    test_set: str,
    backbone: tuple[str, str, str],
    size: int | None = None,
) -> tuple[tuple[float, float, float, float] | None, str]:
    """The paper's cell for this row and test set, or None and the reason it is not comparable.
    `size`: the test set's patch count where known (a cell's site_only.json)."""
    expected = PAPER_TEST_SIZES.get(test_set)
    if size is not None and expected is not None and size != expected:
        return None, f"test set {test_set!r} has {size} patches, the paper's {expected}"
    if backbone != PAPER_BACKBONE:
        return None, f"backbone {backbone[0]} {backbone[1]} ({backbone[2]}) is not the paper's"
    row = PAPER_TABLE1.get((setting, epsilon))
    if row is None:
        return None, f"no Table 1 row {setting} eps={epsilon}"
    if test_set not in row:
        return None, f"test set {test_set!r} is not one of the paper's ({', '.join(row)})"
    return row[test_set], ""
