"""Noise types and contrast-adaptive sharpening on pixels (no WebUI).

The formulas are restated from ComfyUI_IPAdapter_plus (cubiq, 9d076a3): ``IPAdapterNoise.make_noise``
and ``utils.contrast_adaptive_sharpening`` — the CAS written here per pixel, with loops, apart
from the vectorised code under test.
"""

from __future__ import annotations

import math

import pytest
import torch

from ipadapter_ext.core.encode.noise import NoiseType, blur, degrade, stream_seed
from ipadapter_ext.core.encode.preprocess import CLIP_MEAN, CLIP_STD
from ipadapter_ext.core.encode.references import NoiseSpec, add_noise, degrade_pixels
from ipadapter_ext.core.encode.sharpen import sharpen


def _colour(seed: int = 0, size: int = 16) -> torch.Tensor:
    return torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", ["fade", "dissolve", "gaussian"])
def test_the_simple_types_follow_the_reference_formulas(kind):
    colour, s, seed = _colour(), 0.4, 123
    got = degrade(colour, kind, s, 0, seed)
    g = torch.Generator().manual_seed(seed)
    if kind == "fade":
        expected = colour * (1 - s) + torch.rand(colour.shape, generator=g) * s
    elif kind == "dissolve":
        chosen = (torch.rand(colour.shape, generator=g) < s).float()
        expected = colour * (1 - chosen) + torch.rand(colour.shape, generator=g) * chosen
    else:
        expected = colour + torch.randn(colour.shape, generator=g) * s
    torch.testing.assert_close(got, expected.clamp(0, 1))


def test_shuffle_moves_and_flips_the_image():
    colour = torch.zeros(1, 3, 32, 32)
    colour[..., :, :8] = 1.0  # a bright band on the left
    got = degrade(colour, "shuffle", 0.01, 0, 5)  # hardly any noise: the geometry shows
    assert got[..., :, 24:].mean() > got[..., :, :8].mean()  # flipped: the band is now on the right
    assert not torch.equal(degrade(colour, "shuffle", 0.5, 0, 5), degrade(colour, "shuffle", 0.5, 0, 6))


def test_the_original_noise_type_is_unchanged_bit_for_bit():
    """The blend this extension always had, with its fixed seed 0, on normalised pixels."""
    pixels = (_colour(3) - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    uniform = torch.rand(pixels.shape, generator=torch.Generator().manual_seed(0))
    colour = (pixels * std + mean).clamp(0, 1)
    expected = ((1 - 0.3) * colour + 0.3 * uniform - mean) / std
    assert torch.equal(add_noise(pixels, 0.3), expected)
    assert torch.equal(degrade_pixels(pixels, NoiseSpec(NoiseType.NOISE, 0.3, 0, seed=99)), expected)


def test_each_type_is_deterministic_and_distinct():
    colour = _colour(1)
    kinds = [k for k in NoiseType]
    outs = {k: degrade(colour, k, 0.5, 0, stream_seed(42, k)) for k in kinds}
    for k in kinds:
        assert torch.equal(outs[k], degrade(colour, k, 0.5, 0, stream_seed(42, k)))
    for i, a in enumerate(kinds):
        for b in kinds[i + 1 :]:
            assert not torch.allclose(outs[a], outs[b]), (a, b)
    assert stream_seed(42, "fade") != stream_seed(43, "fade") != stream_seed(42, "dissolve")


def test_blur_is_a_normalised_gaussian_with_torchvisions_sigma():
    colour = torch.zeros(1, 1, 21, 21)
    colour[..., 10, 10] = 1.0
    out = blur(colour, 4)  # made odd: 5 taps, σ = 0.3·((5 − 1)/2 − 1) + 0.8 = 1.1
    sigma = 1.1
    taps = torch.tensor([math.exp(-(x**2) / (2 * sigma**2)) for x in range(-2, 3)])
    taps = taps / taps.sum()
    torch.testing.assert_close(out[0, 0, 8:13, 8:13], taps[:, None] * taps[None, :])
    assert out.sum().item() == pytest.approx(1.0) and torch.equal(blur(colour, 0), colour)


def _cas_reference(image: torch.Tensor, amount: float) -> torch.Tensor:
    """utils.contrast_adaptive_sharpening, one pixel at a time (zero padding)."""
    c, h, w = image.shape
    padded = torch.zeros(c, h + 2, w + 2)
    padded[:, 1:-1, 1:-1] = image
    out = torch.empty_like(image)
    for ch in range(c):
        for y in range(h):
            for x in range(w):
                p = padded[ch, y : y + 3, x : x + 3]
                a, b, cc, d, e, f, g, hh, i = p.reshape(-1).tolist()
                mn = max(min(b, d, e, f, hh), 0) + max(min(a, cc, g, i), 0)
                mx = min(max(b, d, e, f, hh), 1) + min(max(a, cc, g, i), 1)
                amp = math.sqrt(min(mn, 2 - mx) / mx) if mx > 0 else float("nan")
                wgt = -amp * (amount * (1 / 5 - 1 / 8) + 1 / 8)
                value = ((b + d + f + hh) * wgt + e) / (1 + 4 * wgt)
                out[ch, y, x] = 0.0 if math.isnan(value) else min(max(value, 0.0), 1.0)
    return out


@pytest.mark.parametrize("amount", [0.2, 1.0])
def test_sharpening_is_comfyuis_contrast_adaptive_sharpening(amount):
    image = _colour(7, 12)[0]
    image[:, :3, :3] = 0.0  # a black corner: 0/0 there, which CAS leaves black
    torch.testing.assert_close(sharpen(image, amount), _cas_reference(image, amount), atol=1e-5, rtol=1e-5)
    assert sharpen(image, 0.0) is image
