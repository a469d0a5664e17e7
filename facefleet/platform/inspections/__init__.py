"""Attempts terminals upload for human inspection: collection settings, labels, retention, inspection sets."""
