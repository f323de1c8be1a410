"""The ServerApp: glue only. The federation itself is `server.federation.Federation`."""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from common.federated.run_config import federated_config, overrides_from
from server.federation import Federation

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    config = federated_config(context.run_config)
    Federation(grid, config, list(overrides_from(context.run_config))).run()
