"""`facefleet serve` and `facefleet scheduler`: the long-running processes (filled by the API issue)."""
