"""The terminal agent: enrolls, installs signed models, authenticates users, adapts on-device (seed 000)."""

AGENT_VERSION = "0.1.0"
