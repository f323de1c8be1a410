"""Deployment: the consortium's certificates and keys."""
