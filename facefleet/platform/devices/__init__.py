"""Terminals: registration, one-time enrollment, device credentials, heartbeats."""
