"""Flower ServerApp, strategy, ledger persistence (federated issue; not built yet)."""
