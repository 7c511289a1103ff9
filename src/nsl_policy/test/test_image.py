import numpy as np
import pytest
import torch

from nsl_policy.image import SUPPORTED_ENCODINGS, resize_for_network, to_rgb, to_tensor

RGB = np.array(
    [[[10, 20, 30], [40, 50, 60], [70, 80, 90]], [[1, 2, 3], [4, 5, 6], [7, 8, 9]]], dtype=np.uint8
)  # (2, 3, 3)


def test_rgb_and_bgr():
    np.testing.assert_array_equal(to_rgb(RGB.tobytes(), 3, 2, "rgb8"), RGB)
    np.testing.assert_array_equal(to_rgb(RGB[:, :, ::-1].tobytes(), 3, 2, "bgr8"), RGB)
    np.testing.assert_array_equal(to_rgb(RGB, 3, 2, "rgb8"), RGB)


def test_alpha_and_mono():
    alpha = np.full((2, 3, 1), 255, np.uint8)
    np.testing.assert_array_equal(
        to_rgb(np.concatenate([RGB, alpha], 2).tobytes(), 3, 2, "rgba8"), RGB
    )
    np.testing.assert_array_equal(
        to_rgb(np.concatenate([RGB[:, :, ::-1], alpha], 2).tobytes(), 3, 2, "bgra8"), RGB
    )
    mono = RGB[:, :, 0]
    out = to_rgb(mono.tobytes(), 3, 2, "mono8")
    assert out.shape == (2, 3, 3) and out.dtype == np.uint8
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], mono)


def test_row_padding_step():
    padded = np.zeros((2, 12), np.uint8)
    padded[:, :9] = RGB.reshape(2, 9)
    np.testing.assert_array_equal(to_rgb(padded.tobytes(), 3, 2, "rgb8", step=12), RGB)


def test_bad_encoding_and_length():
    with pytest.raises(ValueError) as e:
        to_rgb(RGB.tobytes(), 3, 2, "yuv422")
    assert "yuv422" in str(e.value) and all(enc in str(e.value) for enc in SUPPORTED_ENCODINGS)
    with pytest.raises(ValueError, match="bytes"):
        to_rgb(RGB.tobytes()[:-1], 3, 2, "rgb8")
    with pytest.raises(ValueError, match="bytes"):
        to_rgb(RGB.tobytes(), 3, 2, "rgba8")


def test_resize_and_tensor():
    img = np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    small = resize_for_network(img, 64)
    assert small.shape == (64, 64, 3) and small.dtype == np.uint8
    assert resize_for_network(small, 64) is small
    flat = np.full((100, 100, 3), 77, np.uint8)
    np.testing.assert_array_equal(resize_for_network(flat, 32), np.full((32, 32, 3), 77, np.uint8))
    t = to_tensor(np.stack([small, small]))
    assert t.shape == (2, 3, 64, 64) and t.dtype == torch.float32
    assert t.is_contiguous(memory_format=torch.channels_last)
    assert float(t.max()) <= 1.0 and float(t.min()) >= 0.0
    assert abs(float(t[1, 2, 5, 7]) - small[5, 7, 2] / 255.0) < 1e-6
    assert to_tensor(small).shape == (1, 3, 64, 64)
    with pytest.raises(ValueError):
        to_tensor(small.astype(np.float32))
