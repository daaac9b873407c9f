"""The training input pipeline (grain) and a fixed sample of real images.

The global stream: example position ``g = 0, 1, 2, ...`` reads source index ``perm_e(g mod N)`` of
epoch ``e = g // N``, where ``perm_e`` is grain's index shuffle seeded from (seed, e), so every
epoch is a fresh permutation and the stream is a pure function of the seed. Global batch ``k`` is
positions ``[k*B, (k+1)*B)``; process ``p`` of ``P`` decodes only rows ``[p*b, (p+1)*b)`` of it
(``b = B // P``). The random flip of position ``g`` depends on (seed, g) only. So 1-process and
N-process runs with the same global batch see exactly the same examples in the same rows.

Checkpointing: the iterator is a grain ``DatasetIterator`` whose state is ``{"next_index": k}``,
the number of batches it has returned (the same in every process). Save it with orbax, e.g.
``ocp.args.Composite(..., data=grain.checkpoint.CheckpointSave(iterator))`` and restore with
``grain.checkpoint.CheckpointRestore(iterator)``, or store ``iterator.get_state()`` yourself and
call ``iterator.set_state(state)`` on a fresh iterator.
"""

from __future__ import annotations

from typing import Any

import grain
import numpy as np
from absl import flags

from jaxdiff.data.options import DataOptions, parse_data_config
from jaxdiff.data.sources import ImageSource, check_labels, make_source
from jaxdiff.errors import UserError

# Distinct streams derived from the one user seed (shuffle order vs. flips).
_SHUFFLE_STREAM, _FLIP_STREAM = 0x5368, 0x466C


def _derived_seed(seed: int, stream: int) -> int:
    """A 32-bit seed for one stream, from any Python int seed."""
    return int(np.random.SeedSequence([int(seed) % 2**64, stream]).generate_state(1)[0])


def to_float(images: np.ndarray) -> np.ndarray:
    """uint8 ``[..., H, W, C]`` in 0..255 -> float32 in [-1, 1]."""
    return images.astype(np.float32) * np.float32(1 / 127.5) - np.float32(1.0)


class _ProcessRows:
    """(global batch index k, source indices of global batch k ``[B]``) -> this process's batch.

    Returns ``{"image": float32 [b, H, W, C] in [-1, 1], "label": int32 [b]}``.
    """

    def __init__(
        self,
        source: ImageSource,
        *,
        seed: int,
        random_flip: bool,
        process_index: int,
        rows: int,
        num_classes: int | None = None,
        source_name: str = "the data",
    ):
        self.source = source
        self.num_classes, self.source_name = num_classes, source_name
        self.flip_seed = _derived_seed(seed, _FLIP_STREAM)
        self.random_flip = random_flip
        self.first_row = process_index * rows
        self.rows = rows

    def flips(self, positions: np.ndarray) -> np.ndarray:
        """Whether each global position is flipped: a fair coin keyed by (seed, position)."""
        return np.array([np.random.default_rng([self.flip_seed, int(g)]).random() < 0.5 for g in positions])

    def __call__(self, k: int, global_indices: np.ndarray) -> dict[str, np.ndarray]:
        lo, hi = self.first_row, self.first_row + self.rows
        indices = [int(i) for i in global_indices[lo:hi]]
        getitems = getattr(self.source, "__getitems__", None)
        records = getitems(indices) if getitems else [self.source[i] for i in indices]
        images = np.stack([r["image"] for r in records])
        if self.random_flip:
            positions = k * len(global_indices) + np.arange(lo, hi)
            flip = self.flips(positions)
            images[flip] = images[flip, :, ::-1]
        labels = np.array([r["label"] for r in records], dtype=np.int32)
        check_labels(labels, self.num_classes, f"data.source={self.source_name!r}")
        return {"image": to_float(images), "label": labels}


def make_train_iterator(
    data_config: Any,
    *,
    global_batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
) -> grain.DatasetIterator:
    """An endless, checkpointable iterator of this process's rows of each global batch.

    Yields ``{"image": float32 [global_batch_size // process_count, H, W, C] in [-1, 1],
    "label": int32 [b]}``; see the module docstring for the order and the checkpoint calls.

    Raises:
      UserError: an invalid data config or source, or a batch size the process count does not divide.
    """
    opts: DataOptions = parse_data_config(data_config)
    if isinstance(global_batch_size, bool) or not isinstance(global_batch_size, (int, np.integer)):
        raise UserError(f"batch size {global_batch_size!r} must be a positive integer")
    if global_batch_size <= 0:
        raise UserError(f"batch size {global_batch_size} must be a positive integer")
    if process_count <= 0 or not 0 <= process_index < process_count:
        raise UserError(f"process_index={process_index} must be in [0, process_count={process_count})")
    if global_batch_size % process_count:
        raise UserError(
            f"global batch size {global_batch_size} is not divisible by the process count {process_count}; "
            f"use a multiple of {process_count}"
        )
    source = make_source(opts)
    rows = _ProcessRows(
        source,
        seed=seed,
        random_flip=opts.random_flip,
        process_index=process_index,
        rows=global_batch_size // process_count,
        num_classes=opts.num_classes,
        source_name=opts.source,
    )
    dataset = (
        grain.MapDataset.range(len(source))
        .shuffle(seed=_derived_seed(seed, _SHUFFLE_STREAM))
        .repeat()  # epoch e of the shuffled range uses a permutation seeded by (seed, e)
        .batch(global_batch_size, drop_remainder=True)  # source indices of each global batch
        .map_with_index(rows)
        .to_iter_dataset(
            grain.ReadOptions(num_threads=opts.num_threads, prefetch_buffer_size=opts.prefetch_buffer_size)
        )
    )
    if opts.num_workers > 0:
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()  # grain's workers read absl flags: outside absl.app use defaults
        dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=opts.num_workers))
    return iter(dataset)


def make_eval_images(data_config: Any, n: int, seed: int) -> np.ndarray:
    """A fixed sample of ``n`` real images: uint8 ``[n, H, W, C]`` (no flips).

    Images are drawn without replacement from the source in an order set by ``seed`` (the whole
    source is cycled through again, reshuffled, when ``n`` exceeds its size).
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise UserError(f"number of eval images {n!r} must be an integer >= 0")
    opts = parse_data_config(data_config)
    source = make_source(opts)
    rng = np.random.default_rng(seed)
    rounds = -(-n // len(source))
    indices = np.concatenate([rng.permutation(len(source)) for _ in range(rounds)] or [np.zeros(0, int)])[:n]
    images = [source[int(i)]["image"] for i in indices]
    shape = (0, opts.image_size, opts.image_size, opts.channels)
    return np.stack(images) if images else np.zeros(shape, np.uint8)
