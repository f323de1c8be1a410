"""Run orchestration shared by the single-node mode and (later) a federated site."""
