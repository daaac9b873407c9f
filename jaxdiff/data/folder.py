"""``folder:PATH``: every image file under a folder, recursively.

Files are those whose extension Pillow registers (``.png``, ``.jpg``, ``.webp``, ``.tif``, ...);
hidden files and folders (names starting with ".") and other files are ignored. The order is the
sorted relative paths, so it is the same on every machine. Each file is decoded once when the source
is made: files that fail (corrupt, truncated, not really an image) are skipped and counted in the
log, and a folder with no usable image is an error. Any size and mode is accepted (converted and
resized as ``images.to_uint8_image`` describes). Labels are 0.

When the resized images fit in ``CACHE_LIMIT_BYTES`` they are kept in memory (the usual case for
small training images); otherwise each is decoded again when read.
"""

from __future__ import annotations

import concurrent.futures
import os

import numpy as np
from absl import logging
from PIL import Image

from jaxdiff.data.images import open_image, to_uint8_image
from jaxdiff.data.options import DataOptions
from jaxdiff.data.records import make_record
from jaxdiff.errors import UserError

CACHE_LIMIT_BYTES = 1 << 30


def _image_extensions() -> frozenset[str]:
    return frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


def list_image_files(root: str) -> list[str]:
    """Sorted paths of the image files under ``root`` (recursive, hidden entries skipped)."""
    extensions = _image_extensions()
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for filename in filenames:
            if not filename.startswith(".") and os.path.splitext(filename)[1].lower() in extensions:
                found.append(os.path.relpath(os.path.join(dirpath, filename), root))
    return [os.path.join(root, path) for path in sorted(found, key=lambda p: p.split(os.sep))]


class FolderSource:
    """The usable images under a folder as a random-access source (see the module docstring)."""

    def __init__(self, path: str, opts: DataOptions):
        root = os.path.expanduser(path)
        if not path or not os.path.isdir(root):
            raise UserError(f"data folder {path!r} does not exist or is not a folder; give folder:PATH")
        files = list_image_files(root)
        if not files:
            raise UserError(
                f"data folder {path!r} holds no image files (looked recursively for Pillow's extensions "
                "such as .png, .jpg, .webp)"
            )
        self.root = root
        self._size, self._channels, self._center_crop = opts.image_size, opts.channels, opts.center_crop
        cache = len(files) * opts.image_size**2 * opts.channels <= CACHE_LIMIT_BYTES
        # Decoding validates every file; threads overlap the file reads and Pillow's decoders.
        load = self._try_load if cache else lambda file: True if self._try_load(file) is not None else None
        with concurrent.futures.ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1))) as pool:
            decoded = list(pool.map(load, files))
        self.files = [f for f, image in zip(files, decoded, strict=True) if image is not None]
        failed = [f for f, image in zip(files, decoded, strict=True) if image is None]
        if not self.files:  # the error alone says it: no warning line before it
            raise UserError(
                f"data folder {path!r} has no usable images: all {len(files)} image files failed to decode"
            )
        if failed:
            logging.warning(
                "data folder %s: skipped %d of %d image files that could not be read (corrupt or "
                "unsupported), e.g. %s",
                path,
                len(failed),
                len(files),
                failed[0],
            )
        logging.info("data folder %s: %d images", path, len(self.files))
        self._images = np.stack([image for image in decoded if image is not None]) if cache else None

    def _load(self, file: str) -> np.ndarray:
        img = open_image(file, self._size)
        return to_uint8_image(
            img, image_size=self._size, channels=self._channels, center_crop=self._center_crop
        )

    def _try_load(self, file: str) -> np.ndarray | None:
        try:
            return self._load(file)
        except Exception as error:  # noqa: BLE001 - any decoder failure means "unusable file"
            logging.debug("skipping %s: %s", file, error)
            return None

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        if self._images is not None:
            return make_record(self._images[index], 0)
        try:
            return make_record(self._load(self.files[index]), 0)
        except Exception as error:
            raise UserError(
                f"image file {self.files[index]!r} could not be read any more: {error}"
            ) from error

    def __repr__(self) -> str:
        return f"FolderSource({self.root!r}, n={len(self)})"
