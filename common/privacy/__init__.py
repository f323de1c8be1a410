"""Privacy planning and accounting: one planning function, ledgers composed over all history."""

from common.privacy.ledger import LedgerEvent, PrivacyLedger
from common.privacy.plan import PrivacyPlan, plan_privacy, sample_rate_for

__all__ = ["LedgerEvent", "PrivacyLedger", "PrivacyPlan", "plan_privacy", "sample_rate_for"]
