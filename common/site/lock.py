"""One operation at a time per site: an exclusive lock on the site's state dir.

Flower may hand a node's next message to another worker while the previous one still runs
(e.g. after a reply timed out); two processes reading, charging and writing one ledger would
lose a charge. Operations that charge the ledger refuse to start while another holds the lock.

The lock's holder is also the only writer of the state dir's own files (`GUARDED`): a
temporary of one of them found on taking the lock is a write a killed process left (SIGKILL
runs no cleanup; a base model's or an MCGAN checkpoint's is a whole model), removed then.
"""

from __future__ import annotations

import fcntl
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from common.atomic_io import remove_leftover_temporaries
from common.errors import PrivacyError

# written only under the lock, by folder: the ledger, DP plan and server's model, the MCGAN's
# checkpoints and sample grids (`synthesize`); not the feature caches (written beside unlocked
# evaluations)
GUARDED = {
    ".": re.compile(r"ledger\.json|dp_plan\.json|base_model\.pt"),
    "gan/checkpoints": re.compile(r"epoch_\d+\.pt"),
    "gan/samples": re.compile(r"epoch_\d+\.png"),
}


@contextmanager
def site_lock(state_dir: Path, *, wait: bool) -> Iterator[None]:
    """Hold `state_dir/site.lock` exclusively. `wait=False`: raise PrivacyError at once when
    another process holds it (a round or a GAN of this site is still running). Once held, the
    temporaries of `GUARDED` files that a killed writer left are removed."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with (state_dir / "site.lock").open("a") as handle:
        flags = fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB
        try:
            fcntl.flock(handle, flags)
        except BlockingIOError as error:
            raise PrivacyError(
                "another operation of this site is still running (its ledger is in use); "
                "refused rather than run two at once"
            ) from error
        try:
            for folder, names in GUARDED.items():
                remove_leftover_temporaries(state_dir / folder, names.fullmatch)
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
