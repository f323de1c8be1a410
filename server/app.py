"""The ServerApp: glue only. The federation itself is `server.federation.Federation`."""

from __future__ import annotations

import logging

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from common.errors import MammoflError
from common.federated.run_config import federated_config, overrides_from
from common.runs.output_lock import SERVER_LOCK_NAME, output_lock
from server.federation import Federation

app = ServerApp()
log = logging.getLogger("mammofl.server")


class RunRefused(RuntimeError):
    """A run stopped by a mammofl error (a mistyped override, a spent budget): Flower marks
    the run failed and shows this message, without mammofl's or hydra's chained stack."""


class _RefusalsWithoutTraceback(logging.Filter):
    """Flower logs the exception that ends a ServerApp with its traceback; a refusal is the
    user's error (a mistyped override, a spent budget), already said in one line: no stack."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], RunRefused):
            record.exc_info, record.exc_text = None, None
        return True


def _log_through_flower() -> bool:
    """In its own process (a deployed SuperLink's ServerApp) mammofl's progress goes where
    Flower's goes: the run's log (`flwr log`, `flwr run --stream`); True then. In-process (a
    simulation launched by `mammofl federate`) the launcher's logging already shows it."""
    if logging.getLogger().handlers:
        return False
    ours, flower = logging.getLogger("mammofl"), logging.getLogger("flwr")
    if not any(isinstance(f, _RefusalsWithoutTraceback) for f in flower.filters):
        flower.addFilter(_RefusalsWithoutTraceback())
    for handler in flower.handlers:
        if handler not in ours.handlers:
            ours.addHandler(handler)
    ours.setLevel(logging.INFO)
    return True


@app.main()
def main(grid: Grid, context: Context) -> None:
    own_process = _log_through_flower()
    try:
        config = federated_config(context.run_config)
        # a second run given this run_dir while one runs is refused (two ServerApps would
        # interleave one checkpoint and summary)
        with output_lock("ServerApp", lock_name=SERVER_LOCK_NAME, run_dir=config.run_path):
            Federation(grid, config, list(overrides_from(context.run_config))).run()
    except MammoflError as error:
        if not own_process:
            raise  # `mammofl federate` prints it in one line
        log.error("mammofl: error: %s", error)
        raise RunRefused(str(error)) from None
