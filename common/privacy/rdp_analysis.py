"""opacus' RDP analysis (`opacus/accountants/analysis/rdp.py`), loaded on its own.

`import opacus...` runs opacus' package `__init__`, which imports its privacy engine, every
accountant and scipy.stats: about 1.5 s of CPU. A deployed SuperNode starts a fresh ClientApp
process for every message, and most messages only need a ledger's epsilon, so the ledger loads
this one file of opacus (numpy and scipy.special only) instead. The arithmetic is opacus' own,
unchanged; `tests/unit/privacy` checks it against `opacus.accountants.RDPAccountant`.
"""

from __future__ import annotations

import importlib.util
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from types import ModuleType

# opacus.accountants.RDPAccountant.DEFAULT_ALPHAS (a test keeps the two equal)
DEFAULT_ORDERS: tuple[float, ...] = tuple(
    [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
)


@cache
def opacus_rdp() -> ModuleType:
    """The module `opacus.accountants.analysis.rdp`, without importing the opacus package."""
    spec = importlib.util.find_spec("opacus")
    if spec is None or spec.origin is None:
        raise ImportError("opacus is not installed")
    path = Path(spec.origin).parent / "accountants" / "analysis" / "rdp.py"
    module_spec = importlib.util.spec_from_file_location("mammofl_opacus_rdp", path)
    if module_spec is None or module_spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


_WARNING_FILTERS = threading.RLock()


@contextmanager
def largest_order_quiet() -> Iterator[None]:
    """Silence opacus' "Optimal order is the largest alpha" warning. It fires for histories
    whose tightest order is past opacus' largest (a run's first epochs, the very large sigmas a
    noise search tries, PRV's RDP-based domain sizing): the epsilon is then a valid, looser
    bound, and the warning repeated every epoch hides the ones that matter."""
    # catch_warnings swaps the process-wide filter list: one thread at a time (grid lanes
    # account on threads), or a filter could outlive its block
    with _WARNING_FILTERS, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        yield
