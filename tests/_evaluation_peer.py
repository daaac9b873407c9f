"""torch-fidelity's FID Inception and metric functions, imported without its package ``__init__``.

torch-fidelity's ``__init__`` (and its ``utils`` module) import torchvision, which does not import beside
the CPU torch the tests use, and whose install would break diffusers' imports here. The modules the tests
need do not use torchvision: they are loaded from the installed package's folder under an empty package
shell; ``torch_fidelity.utils`` is replaced by a placeholder whose names (data-loading helpers that the
metric modules import but the tested functions never call) raise if called.
"""

from __future__ import annotations

import collections
import importlib
import importlib.util
import sys
import types

import numpy as np
import torch

_SPEC = importlib.util.find_spec("torch_fidelity")
if _SPEC is None or not _SPEC.submodule_search_locations:
    # The README's test command installs it; a missing peer fails the parity tests rather than skipping them.
    raise ImportError("torch-fidelity is not installed: pip install --no-deps torch-fidelity==0.4.0")


def _not_for_tests(*args, **kwargs):
    raise RuntimeError("torch_fidelity.utils is not loaded in the tests (it imports torchvision)")


def _load() -> types.SimpleNamespace:
    if not isinstance(sys.modules.get("torch_fidelity"), types.ModuleType) or not getattr(
        sys.modules["torch_fidelity"], "_jaxdiff_shell", False
    ):
        shell = types.ModuleType("torch_fidelity")
        shell.__path__ = list(_SPEC.submodule_search_locations)
        shell._jaxdiff_shell = True
        sys.modules["torch_fidelity"] = shell
        utils = types.ModuleType("torch_fidelity.utils")
        for name in (
            "create_feature_extractor",
            "extract_featuresdict_from_input_id_cached",
            "resolve_feature_extractor",
            "resolve_feature_layer_for_metric",
            "get_cacheable_input_name",
            "cache_lookup_one_recompute_on_miss",
        ):
            setattr(utils, name, _not_for_tests)
        sys.modules["torch_fidelity.utils"] = utils
    return types.SimpleNamespace(
        inception=importlib.import_module("torch_fidelity.feature_extractor_inceptionv3"),
        fid=importlib.import_module("torch_fidelity.metric_fid"),
        kid=importlib.import_module("torch_fidelity.metric_kid"),
        isc=importlib.import_module("torch_fidelity.metric_isc"),
    )


fidelity = _load()


def random_inception_state_dict(shapes: dict[str, tuple[int, ...]], seed: int) -> collections.OrderedDict:
    """Random FID-Inception tensors (PyTorch names and layouts) that keep activations O(1) through the net."""
    gen = torch.Generator().manual_seed(seed)
    state = collections.OrderedDict()
    for name, shape in shapes.items():
        if name.endswith("conv.weight"):
            fan_in = shape[1] * shape[2] * shape[3]
            value = torch.randn(shape, generator=gen) * np.sqrt(2.0 / fan_in)
        elif name == "fc.weight":
            value = torch.randn(shape, generator=gen) / np.sqrt(shape[1])
        elif name.endswith("running_var") or name.endswith("bn.weight"):
            value = 0.5 + torch.rand(shape, generator=gen)
        else:  # BN bias, running mean, fc bias
            value = 0.1 * torch.randn(shape, generator=gen)
        state[name] = value
        if name.endswith("running_var"):
            state[name.replace("running_var", "num_batches_tracked")] = torch.tensor(0)
    return state


def peer_extractor(weights_path: str):
    """torch-fidelity's FeatureExtractorInceptionV3 with the given weights: 2048 features and both logits."""
    return fidelity.inception.FeatureExtractorInceptionV3(
        "inception-v3-compat",
        ["2048", "logits_unbiased", "logits"],
        feature_extractor_weights_path=weights_path,
    )
