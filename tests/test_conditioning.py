"""Class-conditioning (issue 23): labels from the data, the derived class embedding with its null label,
label dropout in the train step, and the conditional diffusers export.

The dropout's 1-vs-8-devices agreement is in ``tests/test_conditioning_scale.py`` (subprocesses, slow).
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import UNet2DModel
from flax import nnx
from PIL import Image

from jaxdiff import sharding
from jaxdiff.data import make_source, make_train_iterator, parse_data_config
from jaxdiff.data.pipeline import _ProcessRows
from jaxdiff.errors import UserError
from jaxdiff.inference import export_diffusers, load_pretrained
from jaxdiff.models import create_model, functional
from jaxdiff.run_config import parse_run_config
from jaxdiff.training.components import build_components, build_train_step
from jaxdiff.training.label_dropout import drop_labels
from tests._tiny_config import get_config as tiny_config
from tests.conftest import assert_close


def _write_images(folder, names):
    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((6, 6), 10 * len(name), np.uint8)).save(path)


# -- labels from the data ------------------------------------------------------------------------------------


def test_folder_sub_directories_are_classes_like_image_folder(tmp_path):
    _write_images(
        tmp_path, ["dog/a.png", "cat/b.png", "cat/deep/c.png", "ant/d.png", "ant/e.png", ".hid/f.png"]
    )
    source = make_source({"source": f"folder:{tmp_path}", "image_size": 8, "num_classes": 3})
    assert source.class_names == ("ant", "cat", "dog")
    got = {os.path.relpath(f, tmp_path): int(source[i]["label"]) for i, f in enumerate(source.files)}
    assert got == {"ant/d.png": 0, "ant/e.png": 0, "cat/b.png": 1, "cat/deep/c.png": 1, "dog/a.png": 2}
    batch = next(make_train_iterator(source_config(tmp_path, 3), global_batch_size=5, seed=0))
    assert sorted(batch["label"].tolist()) == [0, 0, 1, 1, 2]


def source_config(folder, num_classes):
    return {"source": f"folder:{folder}", "image_size": 8, "num_classes": num_classes, "num_threads": 0}


def test_flat_folder_is_one_class(tmp_path):
    _write_images(tmp_path, ["a.png", "b.png"])
    source = make_source({"source": f"folder:{tmp_path}", "image_size": 8})
    assert source.class_names is None and [int(source[i]["label"]) for i in range(2)] == [0, 0]
    assert len(make_source(source_config(tmp_path, 1))) == 2
    with pytest.raises(UserError, match=r"no class sub-directories .* data.num_classes=4"):
        make_source(source_config(tmp_path, 4))


def test_folder_class_count_and_loose_images_are_checked(tmp_path):
    _write_images(tmp_path, ["x/a.png", "y/b.png"])
    with pytest.raises(UserError, match=r"has 2 class sub-directories \(x, y\) but data.num_classes=3"):
        make_source(source_config(tmp_path, 3))
    _write_images(tmp_path, ["loose.png"])
    with pytest.raises(UserError, match="'loose.png' beside its class sub-directories"):
        make_source(source_config(tmp_path, 2))
    assert len(make_source({"source": f"folder:{tmp_path}", "image_size": 8})) == 3  # unconditional: fine


def test_digits_have_labels_and_class_names():
    source = make_source({"source": "digits", "image_size": 8, "num_classes": 10})
    assert source.class_names == tuple("0123456789")
    assert sorted(set(source.labels.tolist())) == list(range(10))


def test_labels_outside_num_classes_are_one_line_errors():
    with pytest.raises(UserError, match=r"the label 5, outside data.num_classes=5; allowed: 0..4") as info:
        make_source({"source": "digits:all", "image_size": 8, "num_classes": 5})  # 0, 1, ..., 5: refused
    assert "\n" not in str(info.value)

    class Records:  # a source read record by record (as tfds: / hf: are): checked per batch
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return {"image": np.zeros((8, 8, 1), np.uint8), "label": np.int32([0, 1, 7, 2][i])}

    rows = _ProcessRows(
        Records(), seed=0, random_flip=False, process_index=0, rows=4, num_classes=3, source_name="tfds:x"
    )
    with pytest.raises(UserError, match=r"data.source='tfds:x' has the label 7, .* allowed: 0..2"):
        rows(0, np.arange(4))
    ok = _ProcessRows(Records(), seed=0, random_flip=False, process_index=0, rows=4, num_classes=8)
    assert ok(0, np.arange(4))["label"].tolist() == [0, 1, 7, 2]


@pytest.mark.parametrize("value", [0, -1, 2.5, "10", True])
def test_bad_num_classes_values(value):
    with pytest.raises(UserError, match=rf"^data.num_classes={value!r} is not allowed; use a positive"):
        parse_data_config({"num_classes": value})


# -- the class embedding and its null label ------------------------------------------------------------------


def test_num_class_embeds_is_derived_with_a_null_label():
    config = tiny_config()
    config.data.num_classes = 10
    run = parse_run_config(config)
    assert run.model["num_class_embeds"] == 11 and run.class_conditional
    assert run.num_classes == 10 and run.null_label == 10
    config.model.num_class_embeds = 11  # the same, said explicitly: fine
    assert parse_run_config(config).model == run.model
    config.model.num_class_embeds = 10
    with pytest.raises(UserError, match=r"^model.num_class_embeds=10 is not allowed; .* must be 11"):
        parse_run_config(config)


def test_a_config_with_only_num_class_embeds_keeps_its_meaning():
    config = tiny_config()
    config.model.num_class_embeds = 10
    run = parse_run_config(config)
    assert (run.num_classes, run.null_label, run.model["num_class_embeds"]) == (10, None, 10)
    assert parse_run_config(tiny_config()).null_label is None


def test_label_dropout_needs_a_null_label():
    config = tiny_config()
    config.train.cond_drop_prob = 0.1
    with pytest.raises(UserError, match=r"^train.cond_drop_prob=0.1 is not allowed; .*data.num_classes"):
        parse_run_config(config)
    config.data.num_classes = 10
    assert parse_run_config(config).train.cond_drop_prob == 0.1
    config.train.cond_drop_prob = 1.0
    with pytest.raises(UserError, match=r"cond_drop_prob=1.0 .* \[0, 1\)"):
        parse_run_config(config)


# -- label dropout -------------------------------------------------------------------------------------------


def test_drop_labels_replaces_a_fraction_p_by_the_null_label():
    labels = jnp.asarray(np.arange(200_000) % 10, jnp.int32)
    key = jax.random.PRNGKey(3)
    for p in (0.1, 0.5):
        dropped = np.asarray(drop_labels(labels, key, p, 10))
        null = dropped == 10
        assert abs(null.mean() - p) < 0.005, (p, null.mean())  # binomial sd ~ 0.001
        np.testing.assert_array_equal(dropped[~null], np.asarray(labels)[~null])
    assert drop_labels(labels, key, 0.0, 10) is labels
    np.testing.assert_array_equal(drop_labels(labels, key, 0.3, 10), drop_labels(labels, key, 0.3, 10))
    other = drop_labels(labels, jax.random.PRNGKey(4), 0.3, 10)
    assert not np.array_equal(other, drop_labels(labels, key, 0.3, 10))


@pytest.mark.slow  # compiles two train steps
def test_train_step_drops_labels_with_the_step_key(compilation_cache):
    """The step with ``cond_drop_prob`` is the plain conditional step fed the labels that ``drop_labels``
    gives for ``fold_in(state.rng, state.step)``; and it differs from not dropping."""
    config = tiny_config()
    config.data.num_classes = 10
    config.model.dropout = 0.0
    config.train.cond_drop_prob = 0.5
    dropping = build_components(config)
    config.train.cond_drop_prob = 0.0
    plain = build_components(config)
    batch = next(make_train_iterator(config.data, global_batch_size=8, seed=0))
    state = dropping.init_state()
    key = jax.random.fold_in(state.rng, state.step)
    dropped = np.asarray(drop_labels(jnp.asarray(batch["label"]), key, 0.5, 10))
    assert (dropped == 10).any() and (dropped != 10).any()  # this seed drops some labels, not all
    steps = {}

    def run(components, labels):
        if id(components) not in steps:
            steps[id(components)] = build_train_step(components)
        step = steps[id(components)]
        glob = sharding.global_batch({"image": batch["image"], "label": labels}, components.batch_sharding)
        new_state, _ = step(components.init_state(), glob)
        return jax.tree.leaves(jax.device_get(new_state.params))

    with_drop = run(dropping, batch["label"])
    for got, want in zip(with_drop, run(plain, dropped), strict=True):
        np.testing.assert_array_equal(got, want)
    assert any(not np.array_equal(a, b) for a, b in zip(with_drop, run(plain, batch["label"]), strict=True))


# -- the conditional export ----------------------------------------------------------------------------------

COND_UNET = dict(
    _class_name="UNet2DModel",
    sample_size=8,
    in_channels=1,
    out_channels=1,
    block_out_channels=(8, 16),
    layers_per_block=1,
    norm_num_groups=4,
    down_block_types=("DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D"),
    num_class_embeds=4,
)


@pytest.mark.slow  # diffusers + torch forward, two jits
def test_conditional_export_loads_in_diffusers_and_back(tmp_path):
    model = create_model(COND_UNET, rngs=nnx.Rngs(0))
    apply_fn, params = functional(model)
    out = export_diffusers(COND_UNET, {"objective": "ddpm"}, params, tmp_path / "pipe", null_label=3)
    assert out is not None
    assert json.loads((tmp_path / "pipe" / "jaxdiff.json").read_text()) == {"num_classes": 3, "null_label": 3}

    torch_unet = UNet2DModel.from_pretrained(tmp_path / "pipe" / "unet").eval()
    assert torch_unet.config.num_class_embeds == 4
    x = np.random.RandomState(0).randn(4, 8, 8, 1).astype(np.float32)
    t = np.array([3, 500, 999, 42])
    labels = np.array([0, 1, 2, 3])  # 3: the null label
    with torch.no_grad():
        want = (
            torch_unet(
                torch.from_numpy(x.transpose(0, 3, 1, 2)),
                torch.from_numpy(t),
                class_labels=torch.from_numpy(labels),
            )
            .sample.numpy()
            .transpose(0, 2, 3, 1)
        )
    ours = jax.jit(apply_fn)(params, x, t, labels)
    assert_close(ours, want, rel=1e-4)
    # the class embedding matters: another label gives another output
    assert np.abs(np.asarray(apply_fn(params, x, t, np.zeros(4, int))) - np.asarray(ours)).max() > 1e-3

    loaded = load_pretrained(tmp_path / "pipe")
    assert (loaded.num_classes, loaded.null_label) == (3, 3)
    assert_close(jax.jit(loaded.apply_fn)(loaded.params, x, t, labels), want, rel=1e-4)

    (tmp_path / "pipe" / "jaxdiff.json").unlink()  # a diffusers folder from elsewhere: no null label known
    loaded = load_pretrained(tmp_path / "pipe")
    assert (loaded.num_classes, loaded.null_label) == (4, None)


def test_a_bad_null_label_in_jaxdiff_json_is_an_error(tmp_path):
    _, params = functional(create_model(COND_UNET, rngs=nnx.Rngs(0)))
    export_diffusers(COND_UNET, {"objective": "ddpm"}, params, tmp_path, null_label=3)
    (tmp_path / "jaxdiff.json").write_text('{"null_label": 9}')
    with pytest.raises(UserError, match=r"null_label=9; allowed: an integer in 0..3"):
        load_pretrained(tmp_path)
