"""Retention: what the node deletes, when, and how a purge survives a crash."""
