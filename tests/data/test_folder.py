"""Image folders: layout, decoding rules, bad-image policy and the streaming Dataset.

Every image is generated with Pillow in tmp_path; broken files are written byte by byte.
"""

import io
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from cnnlab.data.folder import ImageFolderStream, load_image_folder, load_image_folder_with_report
from cnnlab.errors import DataError, DataFormatError, MissingDataError


def save(path: Path, image: Image.Image | np.ndarray, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    image.save(path, **options)
    return path


def gray(value: int, size=(4, 5)) -> np.ndarray:
    return np.full(size, value, dtype=np.uint8)


def noise(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def encoded(array: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def two_classes(root: Path) -> Path:
    """dog/ written before cat/, files out of order: the reader must sort both."""
    save(root / "dog" / "b.png", gray(30))
    save(root / "dog" / "a.png", gray(20))
    save(root / "cat" / "z.png", gray(10))
    return root


# ---- layout and order ------------------------------------------------------------------------


def test_flat_folder_sorted_classes_files_and_labels(tmp_path):
    data = load_image_folder(two_classes(tmp_path / "pets"))
    assert data.name == "pets"
    assert data.classes == ["cat", "dog"]
    assert data.images.dtype == torch.uint8 and data.images.shape == (3, 1, 4, 5)
    assert data.labels.dtype == torch.int64 and data.labels.tolist() == [0, 1, 1]
    assert data.images[:, 0, 0, 0].tolist() == [10, 20, 30]  # cat/z, dog/a, dog/b


def test_flat_folder_split_all_or_none_and_train_refused(tmp_path):
    root = two_classes(tmp_path / "pets")
    assert torch.equal(load_image_folder(root, "all").images, load_image_folder(root).images)
    with pytest.raises(DataError, match=r"split='train'.*no train/, val/ or test/.*split=None"):
        load_image_folder(root, "train")


def test_split_layout_picks_one_split(tmp_path):
    two_classes(tmp_path / "pets" / "train")
    save(tmp_path / "pets" / "test" / "cat" / "q.png", gray(99))
    save(tmp_path / "pets" / "test" / "dog" / "r.png", gray(98))
    test = load_image_folder(tmp_path / "pets", "test")
    assert test.name == "pets/test" and test.classes == ["cat", "dog"]
    assert test.labels.tolist() == [0, 1] and test.images[:, 0, 0, 0].tolist() == [99, 98]
    assert len(load_image_folder(tmp_path / "pets", "train")) == 3
    with pytest.raises(DataError, match=r"split folders \['test', 'train'\].*split=None"):
        load_image_folder(tmp_path / "pets")
    with pytest.raises(DataError, match=r"found split='val'"):
        load_image_folder(tmp_path / "pets", "val")


def test_split_layout_with_different_classes_names_them(tmp_path):
    two_classes(tmp_path / "pets" / "train")
    save(tmp_path / "pets" / "val" / "cat" / "q.png", gray(1))
    save(tmp_path / "pets" / "val" / "bird" / "q.png", gray(1))
    with pytest.raises(DataError, match=r"train/ lacks \['bird'\]; val/ lacks \['dog'\]"):
        load_image_folder(tmp_path / "pets", "train")


def test_split_folders_mixed_with_class_folders_refused(tmp_path):
    two_classes(tmp_path / "pets")
    save(tmp_path / "pets" / "train" / "cat" / "a.png", gray(1))
    with pytest.raises(DataError, match=r"found both: splits \['train'\].*\['cat', 'dog'\]"):
        load_image_folder(tmp_path / "pets", "train")


def test_missing_folder_no_classes_and_empty_class(tmp_path):
    with pytest.raises(MissingDataError, match="nowhere: no such folder"):
        load_image_folder(tmp_path / "nowhere")
    write(tmp_path / "file.png", b"x")
    with pytest.raises(DataError, match=r"file.png: expected a folder of class subfolders"):
        load_image_folder(tmp_path / "file.png")
    write(tmp_path / "flat" / "a.png", encoded(gray(1), "PNG"))
    with pytest.raises(DataError, match=r"flat: expected one subfolder per class.*no class"):
        load_image_folder(tmp_path / "flat")
    two_classes(tmp_path / "pets")
    write(tmp_path / "pets" / "emu" / "notes.txt", b"no images here")
    with pytest.raises(DataError, match=r"emu: empty class folder.*found 1 other entries"):
        load_image_folder(tmp_path / "pets")


def test_other_files_ignored_and_reported_hidden_files_not(tmp_path):
    root = two_classes(tmp_path / "pets")
    write(root / "README.txt", b"about")
    write(root / "cat" / "notes.txt", b"text")
    save(root / "cat" / "anim.gif", gray(5))
    save(root / "cat" / "nested" / "deep.png", gray(5))
    save(root / "cat" / ".hidden.png", gray(5))
    write(root / "cat" / ".DS_Store", b"\0")
    save(root / ".cache" / "x.png", gray(5))  # a hidden folder is not a class
    save(root / "cat" / "UPPER.JPG", gray(40, (4, 5)), quality=95)
    save(root / "cat" / "pic.jpeg", gray(50, (4, 5)), quality=95)
    data, report = load_image_folder_with_report(root)
    assert data.classes == ["cat", "dog"] and report.kept == len(data) == 5
    assert data.labels.tolist() == [0, 0, 0, 1, 1]
    assert sorted(p.name for p in report.ignored) == [
        "README.txt",
        "anim.gif",
        "nested",
        "notes.txt",
    ]
    assert report.skipped == []


# ---- pixels ----------------------------------------------------------------------------------


def test_channels_inferred_colour_wins_and_gray_is_repeated(tmp_path):
    rgb = noise((4, 5, 3))
    save(tmp_path / "d" / "a" / "rgb.png", rgb)
    save(tmp_path / "d" / "b" / "gray.png", gray(77))
    data = load_image_folder(tmp_path / "d")
    assert data.images.shape == (2, 3, 4, 5)
    assert torch.equal(data.images[0], torch.from_numpy(rgb).permute(2, 0, 1))
    assert (data.images[1] == 77).all()


def test_channels_forced(tmp_path):
    save(tmp_path / "d" / "a" / "red.png", np.full((2, 3, 3), (255, 0, 0), dtype=np.uint8))
    save(tmp_path / "d" / "b" / "gray.png", gray(77, (2, 3)))
    as_gray = load_image_folder(tmp_path / "d", channels=1)
    assert as_gray.images.shape == (2, 1, 2, 3)
    assert as_gray.images[:, 0, 0, 0].tolist() == [76, 77]  # ITU-R 601-2 luma of pure red
    only_gray = tmp_path / "g"
    save(only_gray / "a" / "gray.png", gray(77, (2, 3)))
    assert load_image_folder(only_gray).images.shape == (1, 1, 2, 3)
    assert load_image_folder(only_gray, channels=3).images.shape == (1, 3, 2, 3)


def test_jpeg_decodes_close_to_the_source(tmp_path):
    rgb = np.zeros((16, 16, 3), dtype=np.uint8)
    rgb[:, :8] = (200, 40, 90)
    save(tmp_path / "d" / "a" / "x.jpg", rgb, quality=95)
    data = load_image_folder(tmp_path / "d")
    assert data.images.shape == (1, 3, 16, 16)
    diff = data.images[0].permute(1, 2, 0).int() - torch.from_numpy(rgb).int()
    assert diff.abs().float().mean() < 4


def test_modes_converted(tmp_path):
    root = tmp_path / "d"
    gray_palette = Image.fromarray(gray(9, (2, 2))).convert("P")
    save(root / "a" / "1_palette_gray.png", gray_palette)
    save(root / "a" / "2_alpha.png", Image.new("LA", (2, 2), (200, 128)))
    save(root / "a" / "3_sixteen.png", Image.fromarray(np.full((2, 2), 0x1234, np.uint16)))
    save(root / "a" / "4_bilevel.png", Image.new("1", (2, 2), 1))
    assert Image.open(root / "a" / "3_sixteen.png").mode.startswith("I")
    data = load_image_folder(root)
    assert data.images.shape == (4, 1, 2, 2)  # all count as gray
    assert data.images[:, 0, 0, 0].tolist() == [9, 100, 0x12, 255]  # LA: 200 x 128/255
    colour_palette = Image.new("RGB", (2, 2), (10, 200, 30)).quantize(4)
    save(root / "b" / "palette_colour.png", colour_palette)
    save(root / "b" / "rgba.png", Image.new("RGBA", (2, 2), (200, 100, 50, 51)))
    data = load_image_folder(root)
    assert data.images.shape == (6, 3, 2, 2)
    assert data.images[4, :, 0, 0].tolist() == [10, 200, 30]
    assert data.images[5, :, 0, 0].tolist() == [40, 20, 10]  # composited on black


def test_size_mismatch_names_two_files_and_image_size_resizes(tmp_path):
    save(tmp_path / "d" / "a" / "small.png", gray(60, (4, 5)))
    save(tmp_path / "d" / "b" / "big.png", np.full((9, 7, 3), (10, 20, 30), dtype=np.uint8))
    with pytest.raises(
        DataError, match=r"small.png is 4x5 \(H x W\) but .*big.png is 9x7; pass image_size"
    ):
        load_image_folder(tmp_path / "d")
    data = load_image_folder(tmp_path / "d", image_size=(6, 8))
    assert data.images.shape == (2, 3, 6, 8)
    assert (data.images[0] == 60).all()  # a flat image stays flat when resized
    assert data.images[1, :, 3, 3].tolist() == [10, 20, 30]


def test_bad_options_refused(tmp_path):
    root = two_classes(tmp_path / "pets")
    with pytest.raises(ValueError, match=r"on_error must be one of.*'ignore'"):
        load_image_folder(root, on_error="ignore")
    with pytest.raises(ValueError, match="channels must be None, 1 or 3, found 2"):
        load_image_folder(root, channels=2)
    with pytest.raises(ValueError, match=r"image_size must be \(H, W\).*\(0, 5\)"):
        load_image_folder(root, image_size=(0, 5))


# ---- bad images ------------------------------------------------------------------------------

PNG = encoded(noise((32, 32, 3)), "PNG")
JPEG = encoded(noise((32, 32, 3)), "JPEG")
BAD_FILES = {
    "empty.png": (b"", r"an empty file \(0 bytes\)"),
    "truncated.png": (PNG[: len(PNG) // 2], r"a corrupt or truncated file .*truncated"),
    "truncated.jpg": (JPEG[: len(JPEG) // 2], r"a corrupt or truncated file .*truncated"),
    "text.png": (b"hello, I am not a picture", r"text \('hello, I am not"),
    "gif.png": (encoded(gray(3), "GIF"), "GIF data"),
    "broken_header.png": (PNG[:8] + b"\0" * 40, "a corrupt or truncated file"),
}


@pytest.mark.parametrize("name", list(BAD_FILES))
def test_bad_image_fails_naming_file_and_problem(tmp_path, name):
    data, found = BAD_FILES[name]
    root = two_classes(tmp_path / "pets")
    write(root / "dog" / name, data)
    pattern = rf"dog[/\\]{name}: expected a PNG or JPEG image, found {found}"
    with pytest.raises(DataFormatError, match=pattern):
        load_image_folder(root)


def test_skip_policy_reports_every_bad_image(tmp_path):
    root = two_classes(tmp_path / "pets")
    for name, (data, _) in BAD_FILES.items():
        write(root / "dog" / name, data)
    data, report = load_image_folder_with_report(root, on_error="skip")
    assert len(data) == report.kept == 3 and data.labels.tolist() == [0, 1, 1]
    assert sorted(path.name for path, _ in report.skipped) == sorted(BAD_FILES)
    for path, why in report.skipped:
        assert re.match(BAD_FILES[path.name][1], why), (path, why)
    with pytest.warns(UserWarning, match=r"6 bad images skipped.*\n.*skipped .*broken_header"):
        assert len(load_image_folder(root, on_error="skip")) == 3


def test_skip_with_nothing_left_is_an_error(tmp_path):
    write(tmp_path / "d" / "a" / "x.png", b"")
    with pytest.raises(DataError, match=r"no image could be read.*1 bad images skipped"):
        load_image_folder(tmp_path / "d", on_error="skip")


def test_decompression_bomb_by_max_pixels_and_by_pillow_limit(tmp_path, monkeypatch):
    root = two_classes(tmp_path / "pets")  # 4 x 5 = 20 pixels each
    with pytest.raises(DataFormatError, match=r"decompression bomb \(5x4 = 20 pixels.*limit of 19"):
        load_image_folder(root, max_pixels=19)
    assert len(load_image_folder(root, max_pixels=20)) == 3
    # Pillow only warns between its limit and twice it: the warning must refuse the file too.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 15)
    with pytest.raises(DataFormatError, match=r"decompression bomb \(Image size \(20 pixels\)"):
        load_image_folder(root)


def test_load_truncated_images_must_stay_off(tmp_path, monkeypatch):
    root = two_classes(tmp_path / "pets")
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(DataError, match="LOAD_TRUNCATED_IMAGES is True"):
        load_image_folder(root)


# ---- streaming -------------------------------------------------------------------------------


def mixed_folder(root: Path) -> Path:
    for index in range(5):
        save(root / "a" / f"{index}.png", noise((6 + index, 7, 3), seed=index))
        save(root / "b" / f"{index}.png", noise((5, 4 + index), seed=10 + index))
    return root


def test_stream_matches_in_memory_through_workers(tmp_path):
    root = mixed_folder(tmp_path / "d")
    memory = load_image_folder(root, image_size=(8, 6))
    stream = ImageFolderStream(root, image_size=(8, 6))
    assert len(stream) == 10 and stream.classes == ["a", "b"] and stream.channels == 3
    assert stream.labels.tolist() == memory.labels.tolist()
    clone = pickle.loads(pickle.dumps(stream))
    assert torch.equal(clone[7][0], stream[7][0])
    loader = torch.utils.data.DataLoader(stream, batch_size=4, num_workers=2)
    images, labels = map(torch.cat, zip(*loader, strict=True))
    assert images.dtype == torch.uint8 and images.shape == (10, 3, 8, 6)
    assert torch.equal(images, memory.images) and torch.equal(labels, memory.labels)


def test_stream_without_image_size_needs_one_size(tmp_path):
    root = mixed_folder(tmp_path / "d")
    with pytest.raises(DataError, match=r"a[/\\]0.png is 6x7 \(H x W\) but .*a[/\\]1.png is 7x7"):
        ImageFolderStream(root)
    same = two_classes(tmp_path / "pets")
    stream = ImageFolderStream(same, channels=3)
    image, label = stream[2]
    assert image.shape == (3, 4, 5) and label == 1 and (image == 30).all()


def test_stream_skips_bad_headers_but_raises_on_damage_found_late(tmp_path):
    root = two_classes(tmp_path / "pets")
    write(root / "cat" / "text.png", b"not an image")
    write(root / "dog" / "cut.png", PNG[: len(PNG) // 2])
    with pytest.raises(DataFormatError, match=r"text.png: expected a PNG or JPEG image"):
        ImageFolderStream(root)
    stream = ImageFolderStream(root, on_error="skip", image_size=(4, 5))
    assert [path.name for path, _ in stream.report.skipped] == ["text.png"]
    assert len(stream) == 4 and stream.report.kept == 4
    cut = [Path(f).name for f in stream.files].index("cut.png")
    with pytest.raises(DataFormatError, match=r"cut.png: .*corrupt or truncated"):
        stream[cut]
