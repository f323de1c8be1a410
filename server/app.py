"""The ServerApp: glue only. The federation itself is `server.federation.Federation`."""

from __future__ import annotations

import logging

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from common.federated.run_config import federated_config, overrides_from
from server.federation import Federation

app = ServerApp()


def _log_through_flower() -> None:
    """In its own process (a deployed SuperLink's ServerApp) mammofl's progress goes where
    Flower's goes: the run's log (`flwr log`, `flwr run --stream`). In-process (a simulation
    launched by `mammofl federate`) the launcher's logging already shows it."""
    if logging.getLogger().handlers:
        return
    ours = logging.getLogger("mammofl")
    for handler in logging.getLogger("flwr").handlers:
        if handler not in ours.handlers:
            ours.addHandler(handler)
    ours.setLevel(logging.INFO)


@app.main()
def main(grid: Grid, context: Context) -> None:
    _log_through_flower()
    config = federated_config(context.run_config)
    Federation(grid, config, list(overrides_from(context.run_config))).run()
