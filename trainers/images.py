"""Images and large arrays: a folder of images (one sub-folder per class) and `.npy` files.

An image folder is read with Pillow and scaled to [0, 1]; its images must share one size, or are all
resized to `size` x `size` when one is given (`--image-size`; the `TOOLKIT_IMAGE_SIZE` environment variable
when none is). A `.npy` file `NAME.npy` (inputs) comes with its labels
in `NAME.labels.npy`; the inputs are memory-mapped and never read whole into memory: the split is stratified by
label like any other (computed on the labels alone), each split a `RowView` of the file's rows, which the training
loop reads batch by batch.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .errors import DataError
from .fileio import check_regular_file

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


IMAGE_SIZE_ENV = "TOOLKIT_IMAGE_SIZE"
IMAGE_SIZE_RANGE = (4, 1024)
# The most pixels an image may declare. Its header is read before any pixel, so a file of a few hundred KB that
# declares 13,000 x 13,000 pixels (decoded, 1.4 GB of memory) is refused before it is decoded. 50 megapixels
# is more than a phone's or most cameras' photos hold; Pillow's own limit (89 million, an error only at twice
# that) is a guard against decompression bombs, not a memory budget.
MAX_IMAGE_PIXELS = 50_000_000


def image_size(given: int | None = None, where: str = "--image-size") -> int | None:
    """The side in pixels to resize a folder's images to: `given`, else TOOLKIT_IMAGE_SIZE, else None (no
    resizing); a value outside IMAGE_SIZE_RANGE is one DataError line."""
    low, high = IMAGE_SIZE_RANGE
    if given is None:
        raw = os.environ.get(IMAGE_SIZE_ENV)
        if raw is None or raw == "":
            return None
        if not raw.strip().isdigit() or not low <= int(raw) <= high:
            raise DataError(f"{IMAGE_SIZE_ENV} must be a whole number of pixels from {low} to {high}, got {raw!r}")
        return int(raw)
    if isinstance(given, bool) or not isinstance(given, (int, np.integer)) or not low <= given <= high:
        raise DataError(f"{where} must be a whole number of pixels from {low} to {high}, got {given!r}")
    return int(given)


@contextmanager
def _opened(file: Path):
    """An image opened by Pillow, its declared size checked before any pixel is decoded; an unreadable,
    truncated or oversized file is one DataError line."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(file) as image:
            width, height = image.size
            if width * height > MAX_IMAGE_PIXELS:
                raise DataError(f"{file}: {width}x{height} pixels, over the {MAX_IMAGE_PIXELS:,} an image may "
                                "have here; shrink it first")
            yield image
    except Image.DecompressionBombError:  # Pillow's own check, in `open`, of a size far over ours
        raise DataError(f"{file}: declares more than {MAX_IMAGE_PIXELS:,} pixels, the most an image may "
                        "have here; shrink it first") from None
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DataError(f"{file}: unreadable image ({type(exc).__name__}); remove or replace it") from None


def _pixels(image, channels: int, size: tuple[int, int] | None) -> np.ndarray:
    """An image's pixels scaled to [0, 1], (H, W) for one channel or (H, W, 3), resized to `size` (W, H). A 16-bit
    or 32-bit grey image (modes I;16, I, F) is scaled by its own range: converted to 8 bits, every value above
    255 would be white."""
    from PIL import Image

    if image.mode == "F" or image.mode.startswith("I"):
        plane = image.convert("F")
        if size:
            plane = plane.resize(size, Image.BILINEAR)
        values = np.clip(np.asarray(plane, dtype=np.float32) / (1.0 if image.mode == "F" else 65535.0), 0.0, 1.0)
        return values if channels == 1 else np.repeat(values[..., None], 3, axis=2)
    picture = image.convert("L" if channels == 1 else "RGB")
    if size:
        picture = picture.resize(size, Image.BILINEAR)
    return np.asarray(picture, dtype=np.float32) / 255.0


def _regular(files) -> list[Path]:
    """`files` sorted, each checked to be a regular file (`fileio.check_regular_file`): a FIFO named like an
    image blocked the folder's reader forever."""
    found = sorted(files)
    for file in found:
        check_regular_file(file, "image", DataError)
    return found


def load_image_folder(path: Path, seed: int, size: int | None = None):
    """A DataBundle from `path/<class>/<image>`: RGB (or grey when every image is grey), resized if `size`."""

    from .data import _finish

    size = image_size(size)
    classes = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise DataError(f"{path}: an image folder needs one sub-folder per class, at least two; found {len(classes)}")
    files, labels, empty = [], [], []
    for k, name in enumerate(classes):
        found = _regular(f for f in (path / name).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        files += found
        labels += [k] * len(found)
        if not found:
            empty.append(name)
    if not files:
        raise DataError(f"{path}: no image files ({', '.join(IMAGE_SUFFIXES)}) in the class folders")
    if empty:  # a class without an image would be an output the model can never learn
        raise DataError(f"{path}: class folder '{empty[0]}' holds no image files ({', '.join(IMAGE_SUFFIXES)}); "
                        "add images or remove the folder")
    channels, (width, height) = _planned(path, files, size)
    x = np.empty((len(files), channels, height, width), dtype=np.float32)
    for i, file in enumerate(files):
        with _opened(file) as image:
            if size:
                image.draft(None, (size, size))  # a JPEG decodes at a fraction of its size where that suffices
            pixels = _pixels(image, channels, (size, size) if size else None)
        x[i] = pixels if channels == 1 else pixels.transpose(2, 0, 1)
    bundle = _finish(path.name, str(path), x, np.asarray(labels), None, None, classes, None, seed)
    bundle.from_images = True  # predict warns where a model trained on another scale is given a folder
    return bundle  # the (resized) image size is the input shape


def _planned(path: Path, files: list[Path], size: int | None) -> tuple[int, tuple[int, int]]:
    """(channels, (width, height)) of the folder's input array, from the images' headers alone (Pillow reads no
    pixel before `load`): one channel when every image is grey, else RGB. The array's float32 bytes are held
    to the data budget before any image is decoded: six one-colour 7000 x 7000 PNGs of 143 KB each decode to
    3.5 GB, and decoding them into a list, stacking and transposing it held that three times over."""
    from .data import MAX_DATA_BYTES_ENV, data_budget

    first, grey = None, True
    for file in files:
        with _opened(file) as image:
            first = first or (file, image.size)
            if size is None and image.size != first[1]:
                raise DataError(f"{file}: {image.size[0]}x{image.size[1]} pixels, {first[0].name} has "
                                f"{first[1][0]}x{first[1][1]}; resize them all with --image-size N")
            grey = grey and (image.mode in ("L", "1", "F") or image.mode.startswith("I"))
    channels, shape = (1 if grey else 3), ((size, size) if size else first[1])
    total = len(files) * channels * shape[0] * shape[1] * 4
    if total > data_budget():
        raise DataError(f"{path}: its {len(files):,} images decode to {total:,} bytes ({shape[0]}x{shape[1]} "
                        f"pixels x {channels} channel(s) x 4 bytes each), more than the data budget of "
                        f"{data_budget():,} (set {MAX_DATA_BYTES_ENV} to allow more, or pass --image-size N)")
    return channels, shape


def read_image_files(path: Path, input_shape) -> tuple[np.ndarray, list[str]]:
    """Every image under `path` (sub-folders too, sorted by path) as a model's (C, H, W) inputs: grey for one
    channel, RGB for three, resized to (H, W), scaled to [0, 1] as in training. Returns (x, relative names)."""

    if len(input_shape) != 3 or input_shape[0] not in (1, 3):
        raise DataError(f"{path}: this model takes inputs of shape {tuple(input_shape)}, not images (C, H, W)")
    channels, height, width = input_shape
    files = _regular(f for f in path.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and not f.is_dir())
    if not files:
        raise DataError(f"{path}: no image files ({', '.join(IMAGE_SUFFIXES)}) in the folder")
    images = []
    for file in files:
        with _opened(file) as image:
            image.draft(None, (width, height))  # as in training (`load_image_folder`)
            pixels = _pixels(image, channels, (width, height))
        images.append(pixels[None] if channels == 1 else pixels.transpose(2, 0, 1))
    return np.stack(images), [str(f.relative_to(path)) for f in files]


def load_npy_pair(path: Path, seed: int):
    """Inputs `NAME.npy` (memory-mapped) and labels `NAME.labels.npy`; neither is unpickled."""
    from .data import _finish

    labels_path = path.with_name(path.stem + ".labels.npy")
    if not labels_path.is_file():
        raise DataError(f"{path}: labels not found; put them in {labels_path.name} next to it")
    try:
        x = np.load(path, mmap_mode="r", allow_pickle=False)
        y = np.load(labels_path, allow_pickle=False)
    except ValueError as exc:
        if "pickle" in str(exc).lower() or "python objects" in str(exc).lower():
            raise DataError(f"{path}: holds Python objects, which only unpickling reads (it can run code); "
                            "refused: save numbers (np.save of a numeric array)") from None
        raise DataError(f"{path}: not a readable .npy file ({str(exc).splitlines()[0]})") from None
    except OSError as exc:
        raise DataError(f"cannot read {path} as a .npy file: {exc}") from None
    from .data import split_indices

    y = np.asarray(y)
    rows = None
    if y.ndim == 1 and x.ndim >= 2 and len(y) == len(x) >= 10 and y.dtype.kind in "biuf":
        # The stratified split of the labels alone (label values as class codes, so 10**9 costs nothing), then
        # views of the file's rows, each in file order; anything else is refused by _finish before a split.
        codes = np.unique(y, return_inverse=True)[1].reshape(-1)
        rows = [np.sort(part) for part in split_indices(codes, seed)]
    return _finish(path.stem, str(path), x, y, None, None, None, None, seed, rows=rows)


class RowView:
    """Rows `index` of a memory-mapped array, read from the file only when indexed (a split of a `.npy` file).

    Indexing with a number, a list or array of row numbers, or a boolean mask reads those rows into a NumPy array;
    a slice gives a smaller view; `np.asarray(view)` reads them all. `shape`, `dtype`, `ndim` and `len` are those
    of the rows. NumPy has no view for a non-contiguous set of rows, hence this small class.
    """

    def __init__(self, base: np.ndarray, index: np.ndarray):
        self.base, self.index = base, np.asarray(index, dtype=np.int64)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.index), *self.base.shape[1:])

    @property
    def dtype(self) -> np.dtype:
        return self.base.dtype

    @property
    def ndim(self) -> int:
        return self.base.ndim

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, key):
        if isinstance(key, slice):
            return RowView(self.base, self.index[key])
        if isinstance(key, tuple):  # rows first, then the per-sample axes
            return np.asarray(self[key[0]])[(slice(None), *key[1:])]
        return np.asarray(self.base[self.index[key]])

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        rows = np.asarray(self.base[self.index])
        return rows if dtype is None else rows.astype(dtype, copy=False)

    def __repr__(self) -> str:
        return f"RowView({len(self.index)} rows of {type(self.base).__name__} {tuple(self.base.shape)})"
