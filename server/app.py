"""The ServerApp: glue only. The federation itself is `server.federation.Federation`."""

from __future__ import annotations

import logging

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from common.errors import MammoflError
from common.federated.run_config import federated_config, overrides_from
from server.federation import Federation

app = ServerApp()
log = logging.getLogger("mammofl.server")


class RunRefused(RuntimeError):
    """A run stopped by a mammofl error (a mistyped override, a spent budget): Flower marks
    the run failed and shows this message, without mammofl's or hydra's chained stack."""


def _log_through_flower() -> bool:
    """In its own process (a deployed SuperLink's ServerApp) mammofl's progress goes where
    Flower's goes: the run's log (`flwr log`, `flwr run --stream`); True then. In-process (a
    simulation launched by `mammofl federate`) the launcher's logging already shows it."""
    if logging.getLogger().handlers:
        return False
    ours = logging.getLogger("mammofl")
    for handler in logging.getLogger("flwr").handlers:
        if handler not in ours.handlers:
            ours.addHandler(handler)
    ours.setLevel(logging.INFO)
    return True


@app.main()
def main(grid: Grid, context: Context) -> None:
    own_process = _log_through_flower()
    try:
        config = federated_config(context.run_config)
        Federation(grid, config, list(overrides_from(context.run_config))).run()
    except MammoflError as error:
        if not own_process:
            raise  # `mammofl federate` prints it in one line
        log.error("mammofl: error: %s", error)
        raise RunRefused(str(error)) from None
