"""Rollouts of model versions to device groups: all-at-once or canary, failure limits, rollback."""
