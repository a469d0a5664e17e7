"""The split-able backbone contract every embedding net follows, and the registry that names them."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import nn


class Backbone(nn.Module):
    """An embedding net x [N, 3, H, W] in [-1, 1] -> raw (unnormalised) embedding [N, embedding_dim].

    The net is split in two for on-device adaptation (design.md §5.7): `forward_lower` (frozen on a
    terminal) maps images to a middle feature tensor and `forward_upper` (adapted there) maps that
    tensor to the embedding; `forward(x) == forward_upper(forward_lower(x))`. `upper_parameters()`
    yields exactly the parameters used by `forward_upper`. Call `.eval()` before adapting the upper part
    on single samples: its BatchNorm layers need batch statistics in training mode.
    """

    embedding_dim: int
    input_size: int

    def forward_lower(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_upper(self, middle: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def upper_modules(self) -> list[nn.Module]:
        """The modules that make up the upper part (subclasses list them in forward order)."""
        raise NotImplementedError

    def upper_parameters(self) -> Iterator[nn.Parameter]:
        for module in self.upper_modules():
            yield from module.parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_upper(self.forward_lower(x))


BackboneFactory = Callable[..., Backbone]
_REGISTRY: dict[str, tuple[BackboneFactory, int]] = {}


def register_backbone(name: str, default_embedding_dim: int) -> Callable[[BackboneFactory], BackboneFactory]:
    """Decorator: register `factory(embedding_dim=..., input_size=..., **kw) -> Backbone` under `name`."""

    def decorate(factory: BackboneFactory) -> BackboneFactory:
        if name in _REGISTRY:
            raise ValueError(f"backbone {name!r} is registered twice")
        _REGISTRY[name] = (factory, default_embedding_dim)
        return factory

    return decorate


def list_backbones() -> list[str]:
    """Sorted names accepted by `get_backbone`."""
    return sorted(_REGISTRY)


def default_embedding_dim(name: str) -> int:
    """The embedding size `get_backbone(name)` uses when none is given."""
    return _lookup(name)[1]


def get_backbone(
    name: str, embedding_dim: int | None = None, input_size: int = 112, **kw: object
) -> Backbone:
    """Build a fresh, randomly initialised backbone by registered name (see `list_backbones()`).

    embedding_dim defaults to the architecture's usual size (IResNet 512, MobileFaceNet 128, tiny 64).
    input_size is the square image side; IResNet and MobileFaceNet need a multiple of 16, tiny any ≥ 16.
    """
    factory, default_dim = _lookup(name)
    return factory(embedding_dim=embedding_dim or default_dim, input_size=input_size, **kw)


def _lookup(name: str) -> tuple[BackboneFactory, int]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; choose one of {list_backbones()}") from None


def require_multiple_of_16(name: str, input_size: int) -> None:
    if input_size < 16 or input_size % 16:
        raise ValueError(f"{name} needs an input_size that is a multiple of 16 (e.g. 112), got {input_size}")
