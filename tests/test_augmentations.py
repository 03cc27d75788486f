import numpy as np
import pytest
import torch
from PIL import Image

from factorcl_hf.augmentations import FeatureAugmentation, ImageAugmentation, TextAugmentation


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_image(width=40, height=30, seed=0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


def coordinate_image(width: int, height: int) -> Image.Image:
    """Red channel = column index, green = row index: a crop reveals its own box."""
    columns, rows = np.meshgrid(np.arange(width), np.arange(height))
    pixels = np.stack([columns, rows, np.zeros_like(rows)], axis=-1).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def observed_box(image: Image.Image) -> tuple[int, int, int, int]:
    pixels = np.asarray(image)
    return (
        int(pixels[..., 0].min()),
        int(pixels[..., 1].min()),
        int(pixels[..., 0].max()) + 1,
        int(pixels[..., 1].max()) + 1,
    )


# --------------------------------------------------------------------------- images


def test_image_augmentation_keeps_size_and_mode_and_maps_lists():
    augment = ImageAugmentation()
    gray = random_image().convert("L")
    out = augment(gray, generator=seeded(0))
    assert isinstance(out, Image.Image) and out.mode == "RGB" and out.size == gray.size
    resized = ImageAugmentation(size=(12, 20))(random_image(), generator=seeded(0))
    assert resized.size == (20, 12)  # PIL sizes are (width, height)
    outs = augment([random_image(seed=1), random_image(seed=2)], generator=seeded(0))
    assert isinstance(outs, list) and len(outs) == 2


def test_image_augmentation_is_reproducible_with_a_seeded_generator():
    augment = ImageAugmentation(size=24)
    image = random_image()
    first = np.asarray(augment(image, generator=seeded(3)))
    again = np.asarray(augment(image, generator=seeded(3)))
    other = np.asarray(augment(image, generator=seeded(4)))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    # An augmentation built with seed= replays the same stream when rebuilt.
    stream = [np.asarray(ImageAugmentation(size=24, seed=7)(image)) for _ in range(2)]
    np.testing.assert_array_equal(*stream)


def test_crop_is_the_sampled_box_resized():
    image = coordinate_image(64, 48)
    # Nearest upsampling to the input size keeps every column and row of the crop visible.
    augment = ImageAugmentation(flip_p=0.0, color_jitter_p=0.0, resample=Image.Resampling.NEAREST)
    for seed in range(5):
        out = augment(image, generator=seeded(seed))
        assert observed_box(out) == augment.sample_crop_box(64, 48, generator=seeded(seed))


def test_crop_scale_and_ratio_are_honoured():
    exact = ImageAugmentation(
        crop_scale=(0.25, 0.25),
        crop_ratio=(1.0, 1.0),
        flip_p=0.0,
        color_jitter_p=0.0,
        resample=Image.Resampling.NEAREST,
    )
    left, top, right, bottom = observed_box(exact(coordinate_image(64, 64), generator=seeded(0)))
    assert (right - left, bottom - top) == (32, 32)

    augment = ImageAugmentation()
    generator = seeded(0)
    areas, ratios = [], []
    for _ in range(300):
        left, top, right, bottom = augment.sample_crop_box(100, 80, generator=generator)
        assert 0 <= left < right <= 100 and 0 <= top < bottom <= 80
        areas.append((right - left) * (bottom - top) / (100 * 80))
        ratios.append((right - left) / (bottom - top))
    # Rounding the sides to pixels moves area and aspect by about 1/side.
    assert 0.2 - 0.03 <= min(areas) < 0.3 and 0.9 < max(areas) <= 1.0
    assert 3 / 4 - 0.03 <= min(ratios) and max(ratios) <= 4 / 3 + 0.03


def test_crop_falls_back_to_a_central_crop_within_the_ratio():
    # No crop of aspect 1 with half the area fits a 100x10 strip: the fallback is central.
    augment = ImageAugmentation(crop_scale=(0.5, 0.5), crop_ratio=(1.0, 2.0))
    assert augment.sample_crop_box(100, 10, generator=seeded(0)) == (40, 0, 60, 10)


def test_flip_really_flips_and_zero_probabilities_are_identity():
    image = random_image(40, 30)
    full_crop = dict(crop_scale=(1.0, 1.0), crop_ratio=(40 / 30, 40 / 30))
    flipped = ImageAugmentation(flip_p=1.0, color_jitter_p=0.0, **full_crop)(image, generator=seeded(0))
    np.testing.assert_array_equal(np.asarray(flipped), np.asarray(image)[:, ::-1])
    unchanged = ImageAugmentation(flip_p=0.0, color_jitter_p=0.0, **full_crop)(image, generator=seeded(0))
    np.testing.assert_array_equal(np.asarray(unchanged), np.asarray(image))
    no_jitter = ImageAugmentation(flip_p=0.0, color_jitter=(0, 0, 0, 0), color_jitter_p=1.0, **full_crop)
    np.testing.assert_array_equal(np.asarray(no_jitter(image, generator=seeded(0))), np.asarray(image))


# The whole (square) image, unflipped: only the colour jitter acts.
FULL_SQUARE_CROP = dict(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0)


def test_brightness_jitter_scales_pixels_within_its_range():
    gray = Image.new("RGB", (8, 8), (100, 100, 100))
    augment = ImageAugmentation(color_jitter=(0.4, 0.0, 0.0, 0.0), color_jitter_p=1.0, **FULL_SQUARE_CROP)
    factors = [np.asarray(augment(gray, generator=seeded(seed))).mean() / 100 for seed in range(20)]
    assert 0.6 - 0.01 <= min(factors) and max(factors) <= 1.4 + 0.01
    assert max(factors) - min(factors) > 0.2


def test_hue_jitter_rotates_hue_and_keeps_saturation_and_value():
    orange = Image.new("RGB", (4, 4), (230, 120, 20))
    augment = ImageAugmentation(color_jitter=(0.0, 0.0, 0.0, 0.1), color_jitter_p=1.0, **FULL_SQUARE_CROP)
    before = np.asarray(orange.convert("HSV"), dtype=int)[0, 0]
    shifts = []
    for seed in range(10):
        after = np.asarray(augment(orange, generator=seeded(seed)).convert("HSV"), dtype=int)[0, 0]
        np.testing.assert_allclose(after[1:], before[1:], atol=4)
        shifts.append((after[0] - before[0] + 128) % 256 - 128)
    assert max(abs(s) for s in shifts) <= 0.1 * 255 + 2 and len(set(shifts)) > 1


def test_image_augmentation_rejects_bad_arguments():
    with pytest.raises(ValueError, match="crop_scale"):
        ImageAugmentation(crop_scale=(0.0, 1.0))
    with pytest.raises(ValueError, match="flip_p"):
        ImageAugmentation(flip_p=1.5)
    with pytest.raises(ValueError, match="hue"):
        ImageAugmentation(color_jitter=(0.4, 0.4, 0.4, 0.6))
    with pytest.raises(ValueError, match="images"):
        ImageAugmentation()(torch.zeros(3, 8, 8))


# --------------------------------------------------------------------------- text

CAPTION = "a small red circle in the top left corner"


def test_text_deletion_removes_exactly_one_word():
    augment = TextAugmentation(mode="delete")
    words = CAPTION.split()
    deleted_positions = set()
    for seed in range(30):
        out = augment(CAPTION, generator=seeded(seed)).split()
        positions = [i for i in range(len(words)) if words[:i] + words[i + 1:] == out]
        assert positions, f"{out} is not {words} minus one word"
        deleted_positions.add(positions[0])
    assert len(deleted_positions) > 3  # the word is random, not always the same one
    assert augment("circle", generator=seeded(0)) == "circle"


def test_text_masking_replaces_exactly_one_word():
    augment = TextAugmentation(mode="mask", mask_token="<mask>")
    words = CAPTION.split()
    for seed in range(10):
        out = augment(CAPTION, generator=seeded(seed)).split()
        changed = [i for i, (old, new) in enumerate(zip(words, out)) if old != new]
        assert len(out) == len(words) and len(changed) == 1 and out[changed[0]] == "<mask>"
    assert augment("circle", generator=seeded(0)) == "<mask>"


def test_text_augmentation_is_reproducible_maps_lists_and_respects_p():
    augment = TextAugmentation(mode="delete")
    captions = [CAPTION, "two words", "one"]
    assert augment(captions, generator=seeded(1)) == augment(captions, generator=seeded(1))
    assert [len(c.split()) for c in augment(captions, generator=seeded(1))] == [8, 1, 1]
    assert TextAugmentation(p=0.0)(captions, generator=seeded(1)) == captions
    with pytest.raises(ValueError, match="mode"):
        TextAugmentation(mode="swap")
    with pytest.raises(ValueError, match="texts"):
        augment(3)


# --------------------------------------------------------------------------- feature vectors


@pytest.mark.parametrize("shape", [(6, 5), (4, 7, 5)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_feature_augmentation_preserves_shape_and_dtype(shape, dtype):
    augment = FeatureAugmentation(noise_std=0.1, drop_p=0.15, permute_time=len(shape) == 3, mixup_alpha=0.4)
    x = torch.randn(shape, dtype=dtype)
    out = augment(x, generator=seeded(0))
    assert out.shape == x.shape and out.dtype == dtype
    torch.testing.assert_close(out, augment(x, generator=seeded(0)))
    assert not torch.equal(out, augment(x, generator=seeded(1)))


def test_feature_drop_fraction_matches_drop_p_without_rescaling():
    out = FeatureAugmentation(noise_std=0.0, drop_p=0.15)(torch.ones(200, 100), generator=seeded(0))
    dropped = (out == 0).float().mean().item()
    assert abs(dropped - 0.15) < 0.01  # ~4 standard errors over 20,000 entries
    assert torch.all((out == 0) | (out == 1))


def test_feature_noise_has_the_requested_std():
    out = FeatureAugmentation(noise_std=0.1, drop_p=0.0)(torch.zeros(200, 100), generator=seeded(0))
    assert abs(out.std().item() - 0.1) < 0.003 and abs(out.mean().item()) < 0.003


def test_time_permutation_permutes_rows_of_each_sample_only():
    batch, time, dim = 5, 9, 3
    # Each (sample, step) row holds a unique code, so mixing across samples or within rows shows.
    x = torch.arange(batch * time * dim, dtype=torch.float32).view(batch, time, dim)
    out = FeatureAugmentation(noise_std=0.0, drop_p=0.0, permute_time=True)(x, generator=seeded(0))
    for b in range(batch):
        order = ((out[b, :, 0] - x[b, 0, 0]) / dim).long()
        assert sorted(order.tolist()) == list(range(time))
        torch.testing.assert_close(out[b], x[b, order])
    orders = {tuple(((out[b, :, 0] - x[b, 0, 0]) / dim).long().tolist()) for b in range(batch)}
    assert len(orders) > 1  # each sample draws its own permutation


def test_mixup_mixes_each_sample_with_one_other_sample_and_stays_closest_to_itself():
    batch = 8
    out = FeatureAugmentation(noise_std=0.0, drop_p=0.0, mixup_alpha=1.0)(torch.eye(batch), generator=seeded(0))
    torch.testing.assert_close(out.sum(dim=1), torch.ones(batch))
    assert torch.all(out.diagonal() >= 0.5)
    off_diagonal = out - torch.diag(out.diagonal())
    assert torch.all((off_diagonal > 0).sum(dim=1) == 1)
    partners = off_diagonal.argmax(dim=1)
    assert sorted(partners.tolist()) == list(range(batch))  # a permutation without fixed points
    single = torch.randn(1, 4)
    torch.testing.assert_close(FeatureAugmentation(noise_std=0.0, drop_p=0.0, mixup_alpha=1.0)(single), single)


def test_feature_augmentation_rejects_bad_input():
    with pytest.raises(ValueError, match="permute_time"):
        FeatureAugmentation(permute_time=True)(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="features"):
        FeatureAugmentation()(torch.zeros(4, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="drop_p"):
        FeatureAugmentation(drop_p=-0.1)
    x = torch.ones(3, 4)
    assert torch.equal(FeatureAugmentation(seed=3)(x), FeatureAugmentation(seed=3)(x))
