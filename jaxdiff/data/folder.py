"""``folder:PATH``: every image file under a folder, recursively.

Files are those whose extension Pillow registers (``.png``, ``.jpg``, ``.webp``, ``.tif``, ...);
hidden files and folders (names starting with ".") and other files are ignored. The order is the
sorted relative paths, so it is the same on every machine. Each file is decoded once when the source
is made: files that fail (corrupt, truncated, not really an image) are skipped and counted in the
log, and a folder with no usable image is an error. Any size and mode is accepted (converted and
resized as ``images.to_uint8_image`` describes).

Labels, as torchvision's ``ImageFolder`` gives them: when images lie in sub-directories, each top-level
sub-directory that holds images (at any depth) is a class, and an image's label is the position of its
sub-directory's name in their sorted list (``class_names``). A flat folder is one class, label 0
(``class_names`` None). With ``data.num_classes`` set, the number of class sub-directories (1 for a flat
folder) must equal it, and images lying beside class sub-directories are an error.

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


def _top_folder(root: str, file: str) -> str | None:
    """The name of the top-level sub-directory of ``root`` that ``file`` lies in (None: in ``root``)."""
    parts = os.path.relpath(file, root).split(os.sep)
    return parts[0] if len(parts) > 1 else None


def class_folders(root: str, files: list[str]) -> tuple[str, ...] | None:
    """The sorted names of the top-level sub-directories of ``root`` holding any of ``files`` (paths under
    ``root``), or None when every file lies directly in ``root``."""
    names = {_top_folder(root, f) for f in files} - {None}
    return tuple(sorted(names)) if names else None


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
        self.class_names = class_folders(root, files)
        self._check_classes(path, files, opts.num_classes)
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
        index = {name: i for i, name in enumerate(self.class_names or ())}
        self.labels = np.array([index.get(_top_folder(root, f), 0) for f in self.files], np.int32)

    def _check_classes(self, path: str, files: list[str], num_classes: int | None) -> None:
        """``data.num_classes`` against the class sub-directories (see the module docstring)."""
        if num_classes is None:
            return
        found = 1 if self.class_names is None else len(self.class_names)
        if found != num_classes:
            names = (
                "no class sub-directories (one class)"
                if self.class_names is None
                else (
                    f"{found} class sub-directories ({', '.join(self.class_names[:5])}"
                    f"{', ...' if found > 5 else ''})"
                )
            )
            raise UserError(
                f"data folder {path!r} has {names} but data.num_classes={num_classes}; "
                "set data.num_classes to the number of class sub-directories"
            )
        loose = [f for f in files if _top_folder(self.root, f) is None]
        if self.class_names is not None and loose:
            raise UserError(
                f"data folder {path!r} has the image {os.path.basename(loose[0])!r} beside its class "
                "sub-directories; with data.num_classes every image must lie in a class sub-directory"
            )

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
            return make_record(self._images[index], self.labels[index])
        try:
            return make_record(self._load(self.files[index]), self.labels[index])
        except Exception as error:
            raise UserError(
                f"image file {self.files[index]!r} could not be read any more: {error}"
            ) from error

    def __repr__(self) -> str:
        return f"FolderSource({self.root!r}, n={len(self)})"
