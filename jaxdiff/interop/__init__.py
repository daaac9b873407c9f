"""Interoperability with other libraries' formats (diffusers model and pipeline folders)."""

from jaxdiff.interop.diffusers import (
    load_pipeline,
    load_unet,
    params_to_state_dict,
    read_jaxdiff_metadata,
    save_pipeline,
    save_unet,
    state_dict_to_params,
)

__all__ = [
    "load_pipeline",
    "load_unet",
    "params_to_state_dict",
    "read_jaxdiff_metadata",
    "save_pipeline",
    "save_unet",
    "state_dict_to_params",
]
