"""The device's image reading (meanet_edge.images, meanet_edge.inputs): Pillow and numpy only, the pixels bit for bit
those of the torchvision transform meanet train used, labels from class-folder names, and no torch import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from meanet_edge.images import center_crop, decode_into, resize_crop, to_size
from meanet_edge.inputs import open_inputs

REPO = Path(__file__).resolve().parents[2]
NAMES = ("cat", "9", "dog", "2", "10", "ant")  # folder "10" is class 4, "2" 3, "9" 1: not their sorted positions
SIZES = ((37, 53), (101, 29), (13, 9), (17, 300))  # (width, height): portrait, landscape, tiny, a thin strip
MODES = ("RGB", "L", "RGBA", "CMYK", "P")


def _image(size: tuple[int, int], mode: str, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    w, h = size
    if mode == "L":
        return Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8))
    if mode == "RGBA":
        return Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8))
    rgb = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    return rgb.quantize(64) if mode == "P" else rgb.convert(mode)


def _save(image: Image.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


@pytest.mark.parametrize("side", [32, 96, 224])
def test_the_numpy_decode_is_torchvisions_bit_for_bit(tmp_path: Path, side: int) -> None:
    from torchvision import transforms

    reference = transforms.Compose(
        [transforms.Resize(int(side * 256 / 224)), transforms.CenterCrop(side), transforms.PILToTensor()]
    )
    for i, (size, mode) in enumerate((s, m) for s in SIZES for m in MODES):
        path = _save(_image(size, mode, i), tmp_path / f"{i}.{'tif' if mode == 'CMYK' else 'png'}")
        with Image.open(path) as img:
            expected = reference(img.convert("RGB")).numpy()
        out = np.zeros((3, side, side), dtype=np.uint8)
        assert decode_into(out, path, resize_crop) == ""
        assert out.shape == expected.shape and np.array_equal(out, expected), f"{size} {mode} at S={side}"


def test_a_crop_larger_than_the_image_is_zero_padded_as_torchvision_pads_it() -> None:
    from torchvision.transforms import functional

    for w, h in ((5, 7), (8, 3), (6, 6)):
        image = _image((w, h), "RGB", w * h)
        expected = np.asarray(functional.center_crop(image, [8, 8]))
        assert np.array_equal(center_crop(np.asarray(image), 8), expected), (w, h)


def test_an_image_of_the_models_size_is_used_as_it_is() -> None:
    image = _image((32, 32), "RGB", 1)
    assert np.array_equal(to_size(image, 32), np.asarray(image).transpose(2, 0, 1))
    assert np.array_equal(to_size(_image((40, 40), "RGB", 1), 32), resize_crop(_image((40, 40), "RGB", 1), 32))


def test_a_labelled_folder_takes_its_class_ids_from_the_folder_names(tmp_path: Path) -> None:
    root = tmp_path / "labelled"
    expected: dict[str, tuple[np.ndarray, int]] = {}
    for k, name in enumerate(("10", "2", "9")):
        for i, side in enumerate((32, 40)):  # one of the model's size (as it is), one resized and cropped
            image = _image((side, side), "RGB", 10 * k + i)
            path = _save(image, root / name / f"{i}.png")
            expected[str(path)] = (to_size(image, 32), NAMES.index(name))
    (root / "2" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    inputs = open_inputs(root, 32, NAMES)
    assert inputs.labelled and len(inputs) == 7
    batches = list(inputs.batches(4))
    assert [b.read for b in batches] == [4, 3]
    assert [s.path.name for s in inputs.skipped] == ["broken.png"]
    names = [n for b in batches for n in b.names]
    assert sorted(names) == sorted(expected)
    for b in batches:
        assert b.x.dtype == np.uint8 and b.x.shape == (len(b.names), 3, 32, 32)
        assert b.labels is not None and b.labels.dtype == np.int64
        for name, x, label in zip(b.names, b.x, b.labels.tolist(), strict=True):
            assert np.array_equal(x, expected[name][0]) and label == expected[name][1]


def test_an_npz_is_read_in_either_layout_and_resized_when_needed(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    y = np.array([0, 3, 1, 5, 2], dtype=np.uint8)
    np.savez(tmp_path / "hwc.npz", x=x, y=y)
    np.savez(tmp_path / "chw.npz", images=x.transpose(0, 3, 1, 2))
    hwc, chw = open_inputs(tmp_path / "hwc.npz", 32, NAMES), open_inputs(tmp_path / "chw.npz", 32, NAMES)
    assert hwc.label_source == "the .npz key 'y'" and not chw.labelled
    [first, second] = list(hwc.batches(3))
    assert first.names == ["0", "1", "2"] and second.read == 2
    assert np.array_equal(np.concatenate([first.x, second.x]), x.transpose(0, 3, 1, 2))
    assert first.labels is not None and first.labels.dtype == np.int64 and first.labels.tolist() == [0, 3, 1]
    assert np.array_equal(next(chw.batches(8)).x, x.transpose(0, 3, 1, 2)) and next(chw.batches(8)).labels is None

    big = rng.integers(0, 256, (2, 40, 48, 3), dtype=np.uint8)  # another size: resized as a file would be
    np.savez(tmp_path / "big.npz", x=big)
    resized = next(open_inputs(tmp_path / "big.npz", 32, NAMES).batches(8)).x
    assert np.array_equal(resized, np.stack([resize_crop(Image.fromarray(img), 32) for img in big]))
    np.savez(tmp_path / "bad.npz", x=x, y=np.array([0, 1, 2, 3, 6]))
    with pytest.raises(ValueError, match=r"'y' must hold 5 integer class ids in 0..5"):
        open_inputs(tmp_path / "bad.npz", 32, NAMES)


def test_one_image_and_a_flat_folder_with_a_corrupt_file(tmp_path: Path) -> None:
    one = _save(_image((50, 30), "L", 3), tmp_path / "one.jpg")
    inputs = open_inputs(one, 32, NAMES)
    [batch] = list(inputs.batches(8))
    assert not inputs.labelled and batch.labels is None
    assert batch.names == [str(one)] and batch.x.shape == (1, 3, 32, 32)

    flat = tmp_path / "flat"
    for i in range(3):
        _save(_image((32, 32), "RGB", i), flat / f"{i}.png")
    (flat / "1.png").write_text("not an image")
    (flat / ".DS_Store").write_text("hidden: not data")
    inputs = open_inputs(flat, 32, NAMES)
    assert len(inputs) == 3
    [batch] = list(inputs.batches(8))
    assert batch.names == [str(flat / "0.png"), str(flat / "2.png")] and batch.read == 3
    assert [s.path for s in inputs.skipped] == [flat / "1.png"]
    assert "cannot be read as an image" in inputs.skipped[0].reason
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_inputs(tmp_path / "missing", 32, NAMES)
    with pytest.raises(ValueError, match="bad_images must be one of skip, error"):
        open_inputs(flat, 32, NAMES, bad_images="ignore")


def test_the_edge_modules_import_without_torch() -> None:
    blocked = "import sys; [sys.modules.__setitem__(m, None) for m in ('torch','torchvision','flwr','avalanche')]"
    result = subprocess.run(
        [sys.executable, "-c", f"{blocked}; import meanet_edge.images, meanet_edge.inputs"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
