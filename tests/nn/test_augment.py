"""Batch augmentation: each jitter against a plain reference, draws fixed by the generator, bounds kept."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from facefleet.nn.augment import (
    AugmentSettings,
    affine_matrices,
    augment_batch,
    greyscale,
    step_generator,
)
from facefleet.platform.runs.schemas import AugmentConfig, TrainingConfig

ALL = AugmentSettings(
    shift=0.1, scale=0.1, rotation_degrees=10, brightness=0.2, contrast=0.3, saturation=0.3, greyscale_p=0.3
)


def batch(n: int = 6, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_disabled_settings_return_the_batch_unchanged() -> None:
    images = batch()
    assert not AugmentSettings().enabled
    assert augment_batch(images, AugmentSettings(), torch.Generator()) is images


def test_draws_depend_only_on_seed_rank_and_step_and_leave_the_input_alone() -> None:
    images = batch()
    before = images.clone()
    first = augment_batch(images, ALL, step_generator(3, 1, 40))
    again = augment_batch(images, ALL, step_generator(3, 1, 40))
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    torch.testing.assert_close(images, before, rtol=0, atol=0)
    for other in (step_generator(3, 1, 41), step_generator(3, 0, 40), step_generator(4, 1, 40)):
        assert not torch.equal(augment_batch(images, ALL, other), first)
    assert first.min() >= -1.0 and first.max() <= 1.0 and first.shape == images.shape


def test_affine_draws_stay_inside_their_bounds() -> None:
    settings = AugmentSettings(shift=0.1, scale=0.2, rotation_degrees=15)
    theta = affine_matrices(2000, settings, torch.Generator().manual_seed(0))
    # theta = [[cos/z, -sin/z, tx], [sin/z, cos/z, ty]]: 1/z from the rows' norm, the angle from atan2.
    inverse_zoom = theta[:, 0, :2].norm(dim=1)
    angle = torch.atan2(theta[:, 1, 0], theta[:, 0, 0])
    assert (1 / inverse_zoom).min() >= 0.8 - 1e-6 and (1 / inverse_zoom).max() <= 1.2 + 1e-6
    assert angle.abs().max() <= math.radians(15) + 1e-6
    assert theta[:, :, 2].abs().max() <= 0.2 + 1e-6  # 0.1 of the side = 0.2 in [-1, 1] coordinates
    assert angle.abs().max() > math.radians(12) and theta[:, :, 2].abs().max() > 0.18  # the range is used


def test_a_whole_pixel_shift_moves_the_image_by_that_many_pixels() -> None:
    # Reference: shifting the sampling grid by 2 pixels of 16 equals rolling the image (away from the border).
    images = batch(n=1)
    theta = torch.tensor([[[1.0, 0.0, 2 * 2 / 16], [0.0, 1.0, 0.0]]])
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    shifted = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    torch.testing.assert_close(shifted[..., :, :-2], images[..., :, 2:], rtol=0, atol=1e-5)


def test_brightness_adds_one_offset_per_image_within_its_bound() -> None:
    images = batch() * 0.5  # away from the clamp
    out = augment_batch(images, AugmentSettings(brightness=0.2), torch.Generator().manual_seed(1))
    offsets = (out - images).flatten(1)
    torch.testing.assert_close(offsets, offsets[:, :1].expand_as(offsets), rtol=0, atol=1e-6)
    assert offsets.abs().max() <= 0.2 + 1e-6


def test_contrast_scales_around_the_image_mean_and_keeps_it() -> None:
    images = batch() * 0.3
    out = augment_batch(images, AugmentSettings(contrast=0.5), torch.Generator().manual_seed(2))
    mean_in, mean_out = greyscale(images).mean(dim=(2, 3)), greyscale(out).mean(dim=(2, 3))
    torch.testing.assert_close(mean_out, mean_in, rtol=0, atol=1e-5)
    ratio = (out - out.mean(dim=(1, 2, 3), keepdim=True)).std(dim=(1, 2, 3)) / (
        images - images.mean(dim=(1, 2, 3), keepdim=True)
    ).std(dim=(1, 2, 3))
    assert ratio.min() >= 0.5 - 1e-4 and ratio.max() <= 1.5 + 1e-4 and ratio.std() > 0.01


def test_greyscale_with_probability_one_gives_bt601_luma_in_every_channel() -> None:
    images = batch()
    out = augment_batch(images, AugmentSettings(greyscale_p=1.0), torch.Generator())
    luma = 0.299 * images[:, 0] + 0.587 * images[:, 1] + 0.114 * images[:, 2]
    for channel in range(3):
        torch.testing.assert_close(out[:, channel], luma, rtol=0, atol=1e-6)


def test_saturation_mixes_each_image_with_its_own_grey() -> None:
    # Saturation jitter mixes each image with its own grey: out = grey + (x - grey) * f, with f in [0.5, 1.5].
    images = batch() * 0.4
    out = augment_batch(images, AugmentSettings(saturation=0.5), torch.Generator().manual_seed(5))
    grey = greyscale(images)
    factor = ((out - grey) * (images - grey)).sum(dim=(1, 2, 3)) / ((images - grey) ** 2).sum(dim=(1, 2, 3))
    torch.testing.assert_close(out, grey + (images - grey) * factor.view(-1, 1, 1, 1), rtol=0, atol=1e-5)
    assert factor.min() >= 0.5 - 1e-5 and factor.max() <= 1.5 + 1e-5


def test_the_training_config_carries_augmentation_and_refuses_wild_values() -> None:
    config = TrainingConfig.model_validate({"augment": {"shift": 0.05, "greyscale_p": 0.2}})
    assert AugmentSettings(**config.augment.model_dump()).enabled
    assert not AugmentSettings(**TrainingConfig().augment.model_dump()).enabled  # off by default
    for bad in ({"shift": 0.9}, {"greyscale_p": 1.5}, {"rotation_degrees": -1}, {"blur": 1}):
        with pytest.raises(ValueError):
            AugmentConfig.model_validate(bad)
