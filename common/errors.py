"""Error hierarchy: every message says what is wrong and how to fix it."""


class MammoflError(Exception):
    """Base of every error mammofl raises on purpose."""


class ConfigError(MammoflError, ValueError):
    """A configuration value is invalid; the message names the key and a valid choice."""


class DataError(MammoflError, ValueError):
    """Input data is unusable; the message names the file or field."""


class OutputError(MammoflError, RuntimeError):
    """An output cannot be written (disk full, permissions): the run stops, naming the path;
    what it wrote before stays whole (writes are atomic)."""


class SplitLeakageError(DataError):
    """A patient appears in more than one split."""


class WeightsError(MammoflError, RuntimeError):
    """Model weights cannot be obtained or do not fit the model."""


class PrivacyError(MammoflError, RuntimeError):
    """A training run would break the privacy contract (budget, per-image gradients)."""


class SitePolicyError(PrivacyError):
    """A run asks a site for what its own node_config does not allow (a larger delta, seeded
    noise, exact counts, non-DP synthetic data). The text names only the run's setting and the
    site's rule, so the site's reply may carry it to the server."""


class UnsupportedDPModelError(PrivacyError):
    """The chosen trainable parameters cannot get exact per-image gradients."""


class NonFiniteError(MammoflError, ArithmeticError):
    """Training produced NaN or inf (a loss, or the weights after a step): the run stopped.

    Nothing was saved from the diverged epoch; earlier checkpoints and the ledger's reservation
    (the steps taken stay charged) are kept.
    """
