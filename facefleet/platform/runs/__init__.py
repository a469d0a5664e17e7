"""Training runs: the typed config, the service and the launchers that start the worker entrypoint."""
