"""Workflow definitions and the data contracts they exchange (no I/O in here)."""
