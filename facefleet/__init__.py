"""facefleet: multi-dataset face-recognition training and terminal rollout."""

__version__ = "0.1.0"
