"""Locate and load MTCNN's weights from the facenet-pytorch wheel without importing facenet_pytorch.

The wheel is installed with ``pip install --no-deps facenet-pytorch==2.6.0`` (its package imports torchvision,
which does not work with the CPU torch); only its ``data/{pnet,rnet,onet}.pt`` state dicts are used, loaded
with ``torch.load(weights_only=True)`` into facefleet's own networks. ``FACEFLEET_MTCNN_WEIGHTS`` may name
another folder holding the same three files.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch

from facefleet.nn.mtcnn import ONet, PNet, RNet

WHEEL = "facenet-pytorch==2.6.0"
FILES = ("pnet.pt", "rnet.pt", "onet.pt")


class MTCNNWeightsMissingError(RuntimeError):
    """The MTCNN weight files cannot be found."""


def weights_dir() -> Path:
    """The folder holding pnet.pt, rnet.pt and onet.pt."""
    override = os.environ.get("FACEFLEET_MTCNN_WEIGHTS")
    if override:
        folder = Path(override)
    else:
        # find_spec on a top-level package does not run its __init__ (which imports torchvision).
        spec = importlib.util.find_spec("facenet_pytorch")
        if spec is None or not spec.submodule_search_locations:
            raise MTCNNWeightsMissingError(
                f"MTCNN weights not found: install them with `pip install --no-deps {WHEEL}` "
                "or set FACEFLEET_MTCNN_WEIGHTS to a folder with pnet.pt, rnet.pt and onet.pt"
            )
        folder = Path(next(iter(spec.submodule_search_locations))) / "data"
    missing = [name for name in FILES if not (folder / name).is_file()]
    if missing:
        raise MTCNNWeightsMissingError(f"MTCNN weights missing in {folder}: {', '.join(missing)}")
    return folder


def load_mtcnn() -> tuple[PNet, RNet, ONet]:
    """The three networks with the wheel's weights, in eval mode."""
    folder = weights_dir()
    nets = (PNet(), RNet(), ONet())
    for net, name in zip(nets, FILES, strict=True):
        state = torch.load(folder / name, map_location="cpu", weights_only=True)
        net.load_state_dict(state)
        net.eval()
    return nets
