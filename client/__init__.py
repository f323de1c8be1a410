"""Flower ClientApp and the site runtime it drives (federated issue; not built yet)."""
