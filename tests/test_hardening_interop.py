"""Damaged or hostile diffusers model folders (jaxdiff.interop): one-line ``UserError``s naming the file or
key, a pickle that would run code is refused unread, and a sharded index may only name files in the model
folder. Saving refuses symlinks planted in the target folder."""

import json
import os
import pickle

import numpy as np
import pytest
import torch
from flax import nnx
from safetensors.numpy import save_file

from jaxdiff.errors import UserError
from jaxdiff.interop import load_pipeline, load_unet, params_to_state_dict, save_pipeline, save_unet
from jaxdiff.interop.diffusers import read_state_dict, state_dict_to_params
from jaxdiff.models import create_model, functional

TINY = dict(
    sample_size=8,
    block_out_channels=(8, 16),
    layers_per_block=1,
    norm_num_groups=4,
    down_block_types=("DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D"),
)
WEIGHTS = "diffusion_pytorch_model.safetensors"
INDEX = "diffusion_pytorch_model.safetensors.index.json"
BIN = "diffusion_pytorch_model.bin"


@pytest.fixture(scope="module")
def state():
    _, params = functional(create_model(TINY, rngs=nnx.Rngs(0)))
    return params_to_state_dict(params)


def _folder(path, config=TINY):
    path.mkdir(parents=True, exist_ok=True)
    json_config = {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}
    (path / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel", **json_config}))
    return path


def _error(call):
    with pytest.raises(UserError) as err:
        call()
    message = str(err.value)
    assert "\n" not in message, message
    return message


def test_a_truncated_or_foreign_safetensors_file_names_the_file(tmp_path, state):
    unet = _folder(tmp_path / "unet")
    save_file(state, str(unet / WEIGHTS))
    data = (unet / WEIGHTS).read_bytes()
    for damaged in (data[: len(data) // 2], data[:5], b"not a model at all, just text"):
        (unet / WEIGHTS).write_bytes(damaged)
        message = _error(lambda: load_unet(unet))
        assert f"{str(unet / WEIGHTS)!r} is truncated or not a safetensors file" in message


class _RunsCode:
    """A pickle payload that, if it were unpickled by a plain pickle.load, would create a directory."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_a_bin_pickle_is_read_as_tensors_only_and_never_runs_code(tmp_path, state):
    unet = _folder(tmp_path / "unet")
    path = unet / BIN
    marker = tmp_path / "pwned"
    for protocol in (2, 4):
        with open(path, "wb") as f:
            pickle.dump({"conv_in.weight": _RunsCode(str(marker))}, f, protocol=protocol)
        message = _error(lambda: load_unet(unet))
        assert f"{str(path)!r} holds objects other than tensors" in message and "not loaded" in message
        assert not marker.exists()

    torch.save({"conv_in.weight": torch.ones(3), "epoch": 3}, path)
    assert f"{str(path)!r}: 'epoch' holds a int, not a tensor" in _error(lambda: load_unet(unet))
    torch.save([torch.ones(3)], path)
    assert f"{str(path)!r} holds a list, not a state dict of tensors" in _error(lambda: load_unet(unet))

    torch.save({k: torch.tensor(v) for k, v in state.items()}, path)
    _, params, _ = load_unet(unet)  # the same file intact loads
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert f"{str(path)!r} is truncated or not a PyTorch weights file" in _error(lambda: load_unet(unet))


def test_weights_of_a_wrong_dtype_or_shape_name_the_key(tmp_path, state):
    as_int = dict(state, **{"conv_in.weight": state["conv_in.weight"].astype(np.int32)})
    message = _error(lambda: state_dict_to_params(as_int, TINY))
    assert "'conv_in.weight' has dtype int32" in message and "floating-point" in message
    unet = _folder(tmp_path / "unet")
    save_file(dict(state, **{"conv_out.bias": np.zeros(3, bool)}), str(unet / WEIGHTS))
    assert "'conv_out.bias' has dtype bool" in _error(lambda: load_unet(unet))
    save_file(dict(state, **{"conv_out.bias": np.zeros(5, np.float32)}), str(unet / WEIGHTS))
    assert "'conv_out.bias' has shape (5,)" in _error(lambda: load_unet(unet))


def _sharded(unet, state, names=("model-00001.safetensors", "model-00002.safetensors"), write=(True, True)):
    """Two shards and their index; ``write[i]`` False: the index names shard i, which is not written."""
    keys = sorted(state)
    halves = {names[0]: keys[: len(keys) // 2], names[1]: keys[len(keys) // 2 :]}
    for (name, part), wanted in zip(halves.items(), write, strict=True):
        if wanted:
            save_file({k: state[k] for k in part}, str(unet / name))
    weight_map = {k: name for name, part in halves.items() for k in part}
    (unet / INDEX).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def test_a_sharded_index_reads_only_files_in_the_model_folder(tmp_path, state):
    unet = _folder(tmp_path / "model" / "unet")
    _sharded(unet, state)
    loaded = read_state_dict(unet)
    assert loaded.keys() == state.keys() and all(np.array_equal(loaded[k], state[k]) for k in state)

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    save_file({k: state[k] for k in state}, str(outside / "x.safetensors"))
    bad_names = ["../../elsewhere/x.safetensors", str(outside / "x.safetensors"), "sub/x.safetensors", ".."]
    for bad in bad_names:
        _sharded(unet, state, names=("model-00001.safetensors", bad), write=(True, False))
        message = _error(lambda: load_unet(unet))
        assert f"names the shard {bad!r}" in message and "plain file names in the model folder" in message

    os.symlink(outside / "x.safetensors", unet / "linked.safetensors")
    _sharded(unet, state, names=("model-00001.safetensors", "linked.safetensors"), write=(True, False))
    message = _error(lambda: load_unet(unet))
    assert f"a link to {outside / 'x.safetensors'} outside the model folder" in message

    _sharded(unet, state, names=("model-00001.safetensors", "missing.safetensors"), write=(True, False))
    assert "'missing.safetensors', which is not a file" in _error(lambda: load_unet(unet))
    (unet / INDEX).write_text(json.dumps({"weight_map": ["a"]}))
    assert "no 'weight_map' object" in _error(lambda: load_unet(unet))


def test_hugging_faces_cache_layout_links_into_blobs_and_loads(tmp_path, state):
    repo = tmp_path / "hub" / "models--org--tiny"
    (repo / "blobs").mkdir(parents=True)
    unet = _folder(repo / "snapshots" / "abc123" / "unet")
    _sharded(unet, state)
    for name in ("model-00001.safetensors", "model-00002.safetensors", INDEX):
        blob = repo / "blobs" / f"blob-{name}"
        os.replace(unet / name, blob)
        os.symlink(os.path.relpath(blob, unet), unet / name)
    loaded = read_state_dict(unet)
    assert all(np.array_equal(loaded[k], state[k]) for k in state)


def test_saving_refuses_symlinks_in_the_target_folder(tmp_path, state):
    params = state_dict_to_params(state, TINY)
    victim = tmp_path / "victim.json"
    victim.write_text("keep")
    unet = tmp_path / "saved"
    unet.mkdir()
    os.symlink(victim, unet / "config.json")
    assert f"{unet / 'config.json'} is a symlink" in _error(lambda: save_unet(unet, params, TINY))
    pipeline = tmp_path / "pipeline"
    pipeline.mkdir()
    os.symlink(tmp_path / "elsewhere", pipeline / "unet")
    sched = {"_class_name": "DDPMScheduler", "num_train_timesteps": 10}
    assert f"{pipeline / 'unet'} is a symlink" in _error(lambda: save_pipeline(pipeline, params, TINY, sched))
    assert victim.read_text() == "keep" and not (tmp_path / "elsewhere").exists()

    save_pipeline(tmp_path / "good", params, TINY, sched)  # a clean folder saves and loads back
    _, loaded, _, scheduler = load_pipeline(tmp_path / "good")
    assert scheduler["num_train_timesteps"] == 10
    reloaded = params_to_state_dict(loaded)
    assert reloaded.keys() == state.keys() and all(np.array_equal(reloaded[k], state[k]) for k in state)
