"""Image data for training: random-access sources and deterministic, sharded grain pipelines.

- ``make_source(data_config)``: records ``{"image": uint8 [H, W, C], "label": int32}``.
- ``make_train_iterator(data_config, *, global_batch_size, seed, process_index=0, process_count=1)``:
  endless, checkpointable batches ``{"image": float32 [b, H, W, C] in [-1, 1], "label": int32 [b]}``.
- ``make_eval_images(data_config, n, seed)``: a fixed sample of real images, uint8 ``[n, H, W, C]``.

``data_config`` keys and defaults: see ``jaxdiff.data.options`` (``DEFAULTS``).
"""

from jaxdiff.data.options import DEFAULTS, DataOptions, parse_data_config
from jaxdiff.data.pipeline import make_eval_images, make_train_iterator, to_float
from jaxdiff.data.sources import make_source

__all__ = [
    "DEFAULTS",
    "DataOptions",
    "make_eval_images",
    "make_source",
    "make_train_iterator",
    "parse_data_config",
    "to_float",
]
