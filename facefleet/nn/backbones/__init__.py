"""Registry of face embedding backbones: `get_backbone(name, embedding_dim, input_size)`."""

from facefleet.nn.backbones import iresnet, mobilefacenet, tiny  # noqa: F401  (registers the names)
from facefleet.nn.backbones.base import (
    Backbone,
    default_embedding_dim,
    get_backbone,
    list_backbones,
    register_backbone,
)

__all__ = ["Backbone", "default_embedding_dim", "get_backbone", "list_backbones", "register_backbone"]
