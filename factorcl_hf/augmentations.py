"""The paper's augmentations for FactorCL-SSL: images, captions and feature vectors.

FactorCL-SSL replaces the label by an augmented view, so these transforms define which
information the self-supervised objective treats as "task-relevant". As in the paper:

- images: random resized crop (scale 0.2-1, aspect 3/4-4/3), horizontal flip and, with
  probability 0.8, colour jitter (brightness, contrast, saturation 0.4; hue 0.1);
- captions: delete or mask one random word;
- feature vectors: Gaussian noise, random dropping of entries, permutation of time steps, mixup.

Images are augmented as PIL images, before the CLIP image processor (``CLIPImageProcessorPil``)
resizes and normalises them: that is where a ``datasets`` image column hands them over, and
it keeps colour jitter on real ``[0, 255]`` pixels rather than on normalised values. The
operations mirror torchvision's PIL code path (torchvision itself is not usable here).

Every augmentation is a callable ``aug(x, generator=None)`` taking one item or a list of
items. Randomness comes from ``generator`` if given, else from the augmentation's own
generator if it was built with ``seed=...``, else from torch's global generator (seeded by
``torch.manual_seed`` / ``accelerate.utils.set_seed``, and per worker by ``DataLoader``).
Each ``DataLoader`` worker gets a copy of a ``seed=`` generator, so with several workers
prefer ``seed=None`` (every worker would otherwise replay the same stream).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image, ImageEnhance

__all__ = ["ImageAugmentation", "TextAugmentation", "FeatureAugmentation"]


def _check_probability(name: str, value: float):
    if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"`{name}` must be a probability in [0, 1], got {value!r}")


def _check_non_negative(name: str, value: float):
    if not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"`{name}` must be a number >= 0, got {value!r}")


def _check_interval(name: str, interval, low: float, high: float):
    """``interval`` must be a pair ``(a, b)`` with ``low < a <= b <= high``."""
    if not (isinstance(interval, (tuple, list)) and len(interval) == 2) or not low < interval[0] <= interval[1] <= high:
        raise ValueError(f"`{name}` must be a pair (a, b) with {low} < a <= b <= {high}, got {interval!r}")


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return low + (high - low) * torch.rand((), generator=generator).item()


def _randint(low: int, high: int, generator: torch.Generator | None) -> int:
    """Uniform integer in ``[low, high]`` (both included)."""
    return int(torch.randint(low, high + 1, (), generator=generator).item())


def _happens(probability: float, generator: torch.Generator | None) -> bool:
    return torch.rand((), generator=generator).item() < probability


@dataclass
class _RandomTransform:
    """Generator plumbing and list handling shared by the augmentations."""

    seed: int | None = field(default=None, kw_only=True)
    _own_generator: torch.Generator | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.seed is not None:
            self._own_generator = torch.Generator().manual_seed(self.seed)

    def _generator(self, generator: torch.Generator | None) -> torch.Generator | None:
        return generator if generator is not None else self._own_generator

    def _map(self, items, augment_one, item_type: type, argument: str, generator: torch.Generator | None):
        generator = self._generator(generator)
        if isinstance(items, item_type):
            return augment_one(items, generator)
        if isinstance(items, (list, tuple)) and all(isinstance(item, item_type) for item in items):
            return [augment_one(item, generator) for item in items]
        raise ValueError(
            f"`{argument}` must be a {item_type.__name__} or a list of them, got {type(items).__name__}"
        )


@dataclass
class ImageAugmentation(_RandomTransform):
    """Random resized crop, horizontal flip and colour jitter on PIL images (SimCLR/FactorCL).

    Args:
        size: output size, an int (square) or ``(height, width)``; ``None`` keeps each
            image's own size (the CLIP processor resizes afterwards anyway).
        crop_scale: range of the crop's area as a fraction of the image's area.
        crop_ratio: range of the crop's aspect ratio (width / height), sampled log-uniformly.
        flip_p: probability of a horizontal flip.
        color_jitter: maximal (brightness, contrast, saturation, hue) changes; the first three
            scale by a factor in ``[1 - v, 1 + v]``, hue shifts by a fraction in ``[-v, v]`` of
            the colour circle (``v <= 0.5``). The four run in a random order.
        color_jitter_p: probability of applying the colour jitter at all.
        resample: PIL resampling filter for the crop's resize (CLIP uses bicubic).
        seed: seeds the augmentation's own generator (see the module docstring).

    Call with a PIL image (or a list of them) and an optional ``torch.Generator``; returns RGB
    PIL image(s).
    """

    size: int | tuple[int, int] | None = None
    crop_scale: tuple[float, float] = (0.2, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    color_jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)
    color_jitter_p: float = 0.8
    resample: int = Image.Resampling.BICUBIC

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.size, int):
            self.size = (self.size, self.size)
        is_size_pair = isinstance(self.size, (tuple, list)) and len(self.size) == 2
        if self.size is not None and not (is_size_pair and all(isinstance(s, int) and s > 0 for s in self.size)):
            raise ValueError(f"`size` must be None, a positive int or (height, width), got {self.size!r}")
        _check_interval("crop_scale", self.crop_scale, 0.0, 1.0)
        _check_interval("crop_ratio", self.crop_ratio, 0.0, math.inf)
        _check_probability("flip_p", self.flip_p)
        _check_probability("color_jitter_p", self.color_jitter_p)
        if not (isinstance(self.color_jitter, (tuple, list)) and len(self.color_jitter) == 4):
            raise ValueError(
                f"`color_jitter` must be (brightness, contrast, saturation, hue), got {self.color_jitter!r}"
            )
        for name, value in zip(("brightness", "contrast", "saturation", "hue"), self.color_jitter):
            _check_non_negative(f"color_jitter {name}", value)
        if self.color_jitter[3] > 0.5:
            raise ValueError(f"`color_jitter` hue must be <= 0.5 (half the colour circle), got {self.color_jitter[3]}")

    def __call__(self, images, generator: torch.Generator | None = None):
        return self._map(images, self._augment, Image.Image, "images", generator)

    def _augment(self, image: Image.Image, generator: torch.Generator | None) -> Image.Image:
        image = image.convert("RGB")
        height, width = self.size if self.size is not None else (image.height, image.width)
        box = self.sample_crop_box(image.width, image.height, generator)
        image = image.resize((width, height), resample=self.resample, box=box)
        if _happens(self.flip_p, generator):
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if _happens(self.color_jitter_p, generator):
            image = self._jitter_colors(image, generator)
        return image

    def sample_crop_box(
        self, width: int, height: int, generator: torch.Generator | None = None
    ) -> tuple[int, int, int, int]:
        """A random ``(left, top, right, bottom)`` crop of a ``width`` x ``height`` image.

        Same sampling as torchvision's ``RandomResizedCrop``: up to ten draws of an area in
        ``crop_scale`` and a log-uniform aspect in ``crop_ratio``; if none fits inside the
        image, the largest central crop whose aspect lies within ``crop_ratio``.
        """
        generator = self._generator(generator)
        log_ratio = (math.log(self.crop_ratio[0]), math.log(self.crop_ratio[1]))
        for _ in range(10):
            area = width * height * _uniform(*self.crop_scale, generator)
            aspect = math.exp(_uniform(*log_ratio, generator))
            crop_width = round(math.sqrt(area * aspect))
            crop_height = round(math.sqrt(area / aspect))
            if 0 < crop_width <= width and 0 < crop_height <= height:
                top = _randint(0, height - crop_height, generator)
                left = _randint(0, width - crop_width, generator)
                return left, top, left + crop_width, top + crop_height

        aspect = min(max(width / height, self.crop_ratio[0]), self.crop_ratio[1])
        if width / height <= aspect:
            crop_width, crop_height = width, round(width / aspect)
        else:
            crop_width, crop_height = round(height * aspect), height
        left, top = (width - crop_width) // 2, (height - crop_height) // 2
        return left, top, left + crop_width, top + crop_height

    def _jitter_colors(self, image: Image.Image, generator: torch.Generator | None) -> Image.Image:
        brightness, contrast, saturation, hue = self.color_jitter
        adjustments = []
        # A zero magnitude means "leave this property alone", so it costs no work and no draw.
        enhancers = (
            (ImageEnhance.Brightness, brightness),
            (ImageEnhance.Contrast, contrast),
            (ImageEnhance.Color, saturation),
        )
        for enhancer, magnitude in enhancers:
            if magnitude > 0:
                factor = _uniform(max(0.0, 1.0 - magnitude), 1.0 + magnitude, generator)
                adjustments.append(lambda im, enhancer=enhancer, factor=factor: enhancer(im).enhance(factor))
        if hue > 0:
            shift = _uniform(-hue, hue, generator)
            adjustments.append(lambda im, shift=shift: _shift_hue(im, shift))
        for index in torch.randperm(len(adjustments), generator=generator).tolist():
            image = adjustments[index](image)
        return image


def _shift_hue(image: Image.Image, shift: float) -> Image.Image:
    """Rotate the hue of an RGB image by ``shift`` turns of the colour circle (HSV, 8 bit)."""
    offset = round(shift * 255)
    hue, saturation, value = image.convert("HSV").split()
    # PIL stores hue in [0, 255]; the modulo wraps red back onto red.
    hue = hue.point(lambda h: (h + offset) % 256)
    return Image.merge("HSV", (hue, saturation, value)).convert("RGB")


@dataclass
class TextAugmentation(_RandomTransform):
    """Delete or mask one random word of a caption (the paper's text augmentation).

    Words are whitespace-separated; an augmented caption is re-joined with single spaces.
    Deletion leaves one-word captions unchanged so that no caption becomes empty.

    Args:
        mode: ``"delete"`` removes the word, ``"mask"`` replaces it by ``mask_token``.
        mask_token: the replacement in ``"mask"`` mode. CLIP's vocabulary has no mask token,
            so this is plain text the tokenizer splits like any other word.
        p: probability of augmenting a caption at all.
        seed: seeds the augmentation's own generator (see the module docstring).
    """

    mode: str = "delete"
    mask_token: str = "[MASK]"
    p: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        if self.mode not in ("delete", "mask"):
            raise ValueError(f'`mode` must be "delete" or "mask", got {self.mode!r}')
        if not isinstance(self.mask_token, str) or not self.mask_token.strip() or len(self.mask_token.split()) != 1:
            raise ValueError(f"`mask_token` must be one non-empty word without spaces, got {self.mask_token!r}")
        _check_probability("p", self.p)

    def __call__(self, texts, generator: torch.Generator | None = None):
        return self._map(texts, self._augment, str, "texts", generator)

    def _augment(self, text: str, generator: torch.Generator | None) -> str:
        words = text.split()
        fewest_words = 2 if self.mode == "delete" else 1
        if not _happens(self.p, generator) or len(words) < fewest_words:
            return text
        index = _randint(0, len(words) - 1, generator)
        if self.mode == "delete":
            del words[index]
        else:
            words[index] = self.mask_token
        return " ".join(words)


@dataclass
class FeatureAugmentation(_RandomTransform):
    """Augment feature batches ``[B, d]`` or sequences ``[B, T, d]`` (noise, drop, permute, mixup).

    Applied in this order (each step only if enabled):

    1. mixup: each sample is mixed with another sample of the batch,
       ``λ·x_i + (1-λ)·x_j`` with ``λ ~ Beta(α, α)`` folded onto ``[0.5, 1]`` so the view
       stays closer to its own sample (it is that sample's positive);
    2. time permutation (``[B, T, d]`` only): each sample's time steps are shuffled, every
       step's feature vector kept intact;
    3. Gaussian noise with standard deviation ``noise_std``;
    4. dropping: each entry is zeroed with probability ``drop_p`` (no rescaling: a dropped
       entry reads as a missing measurement, not as dropout).

    Args:
        noise_std: standard deviation of the additive noise (0 disables it).
        drop_p: probability of zeroing each entry (the paper uses 10-20 %).
        permute_time: shuffle the time axis of ``[B, T, d]`` inputs.
        mixup_alpha: Beta concentration of the mixup weight (0 disables mixup).
        seed: seeds the augmentation's own generator (see the module docstring).

    Call with a floating tensor and an optional ``torch.Generator``; returns a new tensor of
    the same shape, dtype and device.
    """

    noise_std: float = 0.1
    drop_p: float = 0.15
    permute_time: bool = False
    mixup_alpha: float = 0.0

    def __post_init__(self):
        super().__post_init__()
        _check_non_negative("noise_std", self.noise_std)
        _check_probability("drop_p", self.drop_p)
        _check_non_negative("mixup_alpha", self.mixup_alpha)

    def __call__(self, features: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if not isinstance(features, torch.Tensor) or not features.is_floating_point() or features.dim() not in (2, 3):
            raise ValueError(
                "`features` must be a floating tensor of shape [batch, features] or [batch, time, features], "
                f"got {type(features).__name__}{tuple(features.shape) if isinstance(features, torch.Tensor) else ''}"
            )
        if self.permute_time and features.dim() != 3:
            raise ValueError(
                "`features` must have shape [batch, time, features] when permute_time=True, "
                f"got {tuple(features.shape)}"
            )
        generator = self._generator(generator)
        if self.mixup_alpha > 0 and features.shape[0] > 1:
            features = self._mixup(features, generator)
        if self.permute_time:
            order = _random(torch.rand, features.shape[:2], features, generator).argsort(dim=1)
            features = torch.take_along_dim(features, order.unsqueeze(-1), dim=1)
        if self.noise_std > 0:
            features = features + self.noise_std * _random(torch.randn, features.shape, features, generator)
        if self.drop_p > 0:
            features = features * (_random(torch.rand, features.shape, features, generator) >= self.drop_p)
        return features

    def _mixup(self, features: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        batch_size = features.shape[0]
        # One random cycle through the batch pairs every sample with a different one.
        cycle = torch.randperm(batch_size, generator=generator)
        partner = torch.empty_like(cycle)
        partner[cycle] = cycle.roll(-1)
        # torch's Beta sampler cannot take a generator; numpy's, seeded from it, stays reproducible.
        numpy_rng = np.random.default_rng(int(torch.randint(2**62, (), generator=generator)))
        weight = torch.from_numpy(numpy_rng.beta(self.mixup_alpha, self.mixup_alpha, size=batch_size))
        weight = torch.maximum(weight, 1 - weight).to(features).view(-1, *([1] * (features.dim() - 1)))
        return weight * features + (1 - weight) * features[partner.to(features.device)]


def _random(sampler, shape, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """``sampler(shape)`` drawn on the generator's device, returned on ``like``'s device and dtype."""
    device = generator.device if generator is not None else like.device
    return sampler(shape, generator=generator, device=device).to(like)
