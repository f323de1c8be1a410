"""One operation at a time per site: an exclusive lock on the site's state dir.

Flower may hand a node's next message to another worker while the previous one still runs
(e.g. after a reply timed out); two processes reading, charging and writing one ledger would
lose a charge. Operations that charge the ledger refuse to start while another holds the lock.

The lock's holder is also the only writer of the state dir's own files (`GUARDED`): a
temporary of one of them found on taking the lock is a write a killed process left (SIGKILL
runs no cleanup; a base model's or an MCGAN checkpoint's is a whole model), removed then.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from common.errors import PrivacyError
from common.folder_lock import FolderInUse, folder_lock

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
    with ExitStack() as held:
        try:
            held.enter_context(folder_lock(state_dir / "site.lock", wait=wait, guarded=GUARDED))
        except FolderInUse as error:
            raise PrivacyError(
                "another operation of this site is still running (its ledger is in use); "
                "refused rather than run two at once"
            ) from error
        yield
