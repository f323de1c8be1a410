"""One operation at a time per site: an exclusive lock on the site's state dir.

Flower may hand a node's next message to another worker while the previous one still runs
(e.g. after a reply timed out); two processes reading, charging and writing one ledger would
lose a charge. Operations that charge the ledger refuse to start while another holds the lock.

The lock's holder is also the only writer of the state dir's own files (`GUARDED_FILES`): a
temporary of one of them found on taking the lock is a write a killed process left (SIGKILL
runs no cleanup; a base model's is a whole model), and is removed then.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from common.atomic_io import leftover_temporaries
from common.errors import PrivacyError

# written only under the lock (ledger, DP plan, the server's model); the GAN's checkpoints
# and the feature caches have their own folders and are not among them
GUARDED_FILES = frozenset({"ledger.json", "dp_plan.json", "base_model.pt"})


@contextmanager
def site_lock(state_dir: Path, *, wait: bool) -> Iterator[None]:
    """Hold `state_dir/site.lock` exclusively. `wait=False`: raise PrivacyError at once when
    another process holds it (a round or a GAN of this site is still running). Once held, the
    temporaries of `GUARDED_FILES` that a killed writer left are removed."""
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
            for path in leftover_temporaries(state_dir, GUARDED_FILES.__contains__):
                path.unlink(missing_ok=True)
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
