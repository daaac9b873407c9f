"""jaxdiff.data: sources (digits, tfds:, folder:, hf:), the sharded grain pipeline, resume, bad input."""

import json
import logging
import os
import subprocess
import sys

import grain
import numpy as np
import pytest
from PIL import Image

import jaxdiff.data as jd
from jaxdiff.data import pipeline
from jaxdiff.errors import UserError
from tests._data_tfds import build_tiny_tfds, example_pixels

DIGITS = {"source": "digits", "image_size": 16, "channels": 1}


def take(iterator, n):
    return [next(iterator) for _ in range(n)]


def assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["label"], y["label"])


def assert_one_line_error(match: str, fn, *args, **kwargs) -> str:
    with pytest.raises(UserError, match=match) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    """Three tiny TFDS datasets (uint8 Tensor, Image feature from PNG, raw PNG bytes) in one data_dir."""
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    build_tiny_tfds(data_dir, "jaxdiff_tiny_tensor", kind="tensor", n=10, size=8, channels=1)
    build_tiny_tfds(data_dir, "jaxdiff_tiny_image", kind="image", n=10, size=8, channels=3)
    build_tiny_tfds(data_dir, "jaxdiff_tiny_bytes", kind="bytes", n=10, size=8, channels=1)
    return data_dir


# -- digits ----------------------------------------------------------------------------------------------


def test_digits_source_shapes_range_and_resize():
    source = jd.make_source({**DIGITS, "source": "digits:all"})
    assert len(source) == 1797
    record = source[0]
    assert record["image"].shape == (16, 16, 1) and record["image"].dtype == np.uint8
    assert record["label"].dtype == np.int32 and int(record["label"]) == 0  # sklearn's first digit is a 0
    images = np.stack([source[i]["image"] for i in range(50)])
    assert images.min() == 0 and images.max() >= 250  # 0..16 rescaled to the full 0..255 range
    labels = {int(source[i]["label"]) for i in range(50)}
    assert labels == set(range(10))
    # channels=3 replicates the gray channel; other sizes resize.
    rgb = jd.make_source({**DIGITS, "source": "digits:all", "channels": 3, "image_size": 8})
    assert rgb[5]["image"].shape == (8, 8, 3)
    np.testing.assert_array_equal(rgb[5]["image"][..., 0], rgb[5]["image"][..., 2])
    from sklearn.datasets import load_digits

    # At the native size the pixels are exactly the rescaled originals.
    np.testing.assert_array_equal(rgb[5]["image"][..., 0], np.round(load_digits().images[5] * 255 / 16))


def test_digits_splits_partition_the_digits_and_are_the_metrics_split():
    from sklearn.model_selection import train_test_split

    full = jd.make_source({**DIGITS, "source": "digits:all"})
    train, test = jd.make_source(DIGITS), jd.make_source({**DIGITS, "source": "digits:test"})
    assert (len(train), len(test)) == (1397, 400)  # plain "digits" is the train split
    assert np.bincount(test.labels).min() >= 39  # stratified: about 40 of each class

    # Together they are the 1,797 digits, each once.
    def rows(images, labels):  # each digit as one row (its pixels, then its label), rows sorted
        x = np.concatenate([images.reshape(len(images), -1), labels[:, None].astype(np.uint8)], 1)
        return x[np.lexsort(x.T[::-1])]

    np.testing.assert_array_equal(
        rows(np.concatenate([train.images, test.images]), np.concatenate([train.labels, test.labels])),
        rows(full.images, full.labels),
    )
    # The digits metric's held-out set is the test split, in the same order: scikit-learn's stratified split.
    _, heldout_x, _, heldout_y = train_test_split(
        full.images, full.labels, test_size=400, stratify=full.labels, random_state=0
    )
    np.testing.assert_array_equal(test.images, heldout_x)
    np.testing.assert_array_equal(test.labels, heldout_y)
    with pytest.raises(UserError, match="unknown digits split 'valid'; allowed: train, test, all"):
        jd.make_source({**DIGITS, "source": "digits:valid"})


def test_digits_iterator_batches_determinism_and_epochs():
    first = take(jd.make_train_iterator(DIGITS, global_batch_size=32, seed=3), 3)
    again = take(jd.make_train_iterator(DIGITS, global_batch_size=32, seed=3), 3)
    other = take(jd.make_train_iterator(DIGITS, global_batch_size=32, seed=4), 3)
    assert_batches_equal(first, again)
    assert not np.array_equal(first[0]["image"], other[0]["image"])
    batch = first[0]
    assert batch["image"].shape == (32, 16, 16, 1) and batch["image"].dtype == np.float32
    assert batch["label"].shape == (32,) and batch["label"].dtype == np.int32
    assert batch["image"].min() == -1.0 and batch["image"].max() == 1.0
    # The pixels are the source's uint8 values mapped affinely to [-1, 1].
    np.testing.assert_allclose(
        (batch["image"] + 1) * 127.5, np.round((batch["image"] + 1) * 127.5), atol=1e-4
    )


def test_every_epoch_is_a_fresh_permutation(tfds_dir):
    # 10 examples whose pixels encode their index; batches of 4 cross epoch boundaries.
    config = {"source": "tfds:jaxdiff_tiny_tensor", "data_dir": tfds_dir, "image_size": 8, "channels": 1}
    batches = take(jd.make_train_iterator(config, global_batch_size=4, seed=0), 10)
    pixels = np.concatenate([b["image"][:, 0, 0, 0] for b in batches])
    index = np.round((pixels + 1) * 127.5 / 10).astype(int)
    epochs = index.reshape(4, 10)
    for epoch in epochs:
        assert sorted(epoch) == list(range(10))
    assert len({tuple(e) for e in epochs}) == 4  # reshuffled every epoch
    labels = np.concatenate([b["label"] for b in batches])
    np.testing.assert_array_equal(labels, index % 3)


# -- process sharding, flips, resume --------------------------------------------------------------------


def test_process_rows_concatenate_to_the_same_global_batches():
    config = {**DIGITS, "random_flip": True}
    reference = take(jd.make_train_iterator(config, global_batch_size=8, seed=7), 4)
    for count in (2, 4):
        per_process = [
            take(
                jd.make_train_iterator(
                    config, global_batch_size=8, seed=7, process_index=p, process_count=count
                ),
                4,
            )
            for p in range(count)
        ]
        for step, global_batch in enumerate(reference):
            rows = [per_process[p][step] for p in range(count)]
            assert all(r["image"].shape == (8 // count, 16, 16, 1) for r in rows)
            np.testing.assert_array_equal(np.concatenate([r["image"] for r in rows]), global_batch["image"])
            np.testing.assert_array_equal(np.concatenate([r["label"] for r in rows]), global_batch["label"])


def test_each_process_decodes_only_its_rows(monkeypatch):
    reads = []

    class Counting:
        def __init__(self, source):
            self.source = source

        def __len__(self):
            return len(self.source)

        def __getitem__(self, index):
            reads.append(index)
            return self.source[index]

    real_make_source = pipeline.make_source
    monkeypatch.setattr(pipeline, "make_source", lambda config: Counting(real_make_source(config)))
    config = {**DIGITS, "num_threads": 0}
    iterator = jd.make_train_iterator(config, global_batch_size=8, seed=1, process_index=1, process_count=4)
    take(iterator, 3)
    assert len(reads) == 3 * 2


def test_random_flip_mirrors_about_half_the_examples():
    plain = take(jd.make_train_iterator(DIGITS, global_batch_size=64, seed=5), 2)
    flipped = take(jd.make_train_iterator({**DIGITS, "random_flip": True}, global_batch_size=64, seed=5), 2)
    same = mirrored = 0
    for p, f in zip(plain, flipped, strict=True):
        np.testing.assert_array_equal(p["label"], f["label"])  # flips never change the order
        for x, y in zip(p["image"], f["image"], strict=True):
            is_same, is_mirror = np.array_equal(x, y), np.array_equal(x[:, ::-1], y)
            assert is_same or is_mirror
            same += is_same and not is_mirror
            mirrored += is_mirror and not is_same
    assert 30 < mirrored < 98 and 30 < same < 98


def test_get_state_set_state_resumes_exactly():
    config = {**DIGITS, "random_flip": True}
    iterator = jd.make_train_iterator(config, global_batch_size=16, seed=2)
    take(iterator, 5)
    state = iterator.get_state()
    assert json.loads(json.dumps(state)) == state  # JSON-serialisable, as grain's orbax handler writes it
    expected = take(iterator, 3)
    resumed = jd.make_train_iterator(config, global_batch_size=16, seed=2)
    resumed.set_state(state)
    assert_batches_equal(take(resumed, 3), expected)


def test_orbax_checkpoint_of_the_iterator(tmp_path):
    import orbax.checkpoint as ocp

    iterator = jd.make_train_iterator(DIGITS, global_batch_size=8, seed=0)
    take(iterator, 4)
    with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
        manager.save(4, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(iterator)))
        manager.wait_until_finished()
    expected = take(iterator, 2)
    fresh = jd.make_train_iterator(DIGITS, global_batch_size=8, seed=0)
    with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
        manager.restore(4, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh)))
    assert_batches_equal(take(fresh, 2), expected)


def test_worker_processes_give_the_same_batches(tfds_dir):
    # Outside absl.app the flags grain's workers read are unparsed: make_train_iterator handles it.
    config = {"source": "tfds:jaxdiff_tiny_tensor", "data_dir": tfds_dir, "image_size": 8, "channels": 1}
    expected = take(jd.make_train_iterator(config, global_batch_size=4, seed=9), 4)
    iterator = jd.make_train_iterator({**config, "num_workers": 2}, global_batch_size=4, seed=9)
    try:
        assert_batches_equal(take(iterator, 4), expected)
    finally:
        iterator.close()


def test_eval_images_fixed_sample():
    images = jd.make_eval_images(DIGITS, 20, seed=0)
    assert images.shape == (20, 16, 16, 1) and images.dtype == np.uint8
    np.testing.assert_array_equal(images, jd.make_eval_images(DIGITS, 20, seed=0))
    assert not np.array_equal(images, jd.make_eval_images(DIGITS, 20, seed=1))
    assert len({im.tobytes() for im in jd.make_eval_images(DIGITS, 300, seed=0)}) > 290  # no replacement
    assert jd.make_eval_images(DIGITS, 0, seed=0).shape == (0, 16, 16, 1)


# -- tfds: ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["jaxdiff_tiny_tensor", "jaxdiff_tiny_image", "jaxdiff_tiny_bytes"])
def test_tfds_source_decodes_arrays_image_features_and_bytes(tfds_dir, name):
    channels = 3 if name == "jaxdiff_tiny_image" else 1
    source = jd.make_source(
        {"source": f"tfds:{name}", "data_dir": tfds_dir, "image_size": 8, "channels": channels}
    )
    assert len(source) == 10
    # TFDS stores examples in a hashed order: find each example by its pixels (10 * i) and check its label.
    found = set()
    for j in range(len(source)):
        record = source[j]
        i = int(record["image"][0, 0, 0]) // 10
        np.testing.assert_array_equal(record["image"], example_pixels(i, 8, channels))
        assert record["label"] == i % 3 and record["label"].dtype == np.int32
        found.add(i)
    assert found == set(range(10))
    # Another size and channel count: resized and converted.
    big = jd.make_source(
        {"source": f"tfds:{name}:test", "data_dir": tfds_dir, "image_size": 12, "channels": 3}
    )
    assert len(big) == 2
    values = sorted(int(big[j]["image"][0, 0, 0]) for j in range(2))
    assert values == [100, 110]
    for j in range(2):
        np.testing.assert_array_equal(
            big[j]["image"], np.full((12, 12, 3), big[j]["image"][0, 0, 0], np.uint8)
        )


def test_tfds_split_slicing_and_version(tfds_dir):
    source = jd.make_source(
        {"source": "tfds:jaxdiff_tiny_tensor:1.0.0:train[:3]", "data_dir": tfds_dir, "image_size": 8}
    )
    assert len(source) == 3


def test_tfds_dataset_reads_in_a_fresh_process(tfds_dir):
    # What train.py does: no builder class in memory, only the files in data_dir.
    code = (
        "import jaxdiff.data as jd; "
        f"s = jd.make_source({{'source': 'tfds:jaxdiff_tiny_bytes', 'data_dir': {tfds_dir!r}, "
        "'image_size': 8}); "
        "print(len(s), sorted(int(s[j]['image'][0, 0, 0]) for j in range(len(s))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"10 {list(range(0, 100, 10))}"


# -- folder: ----------------------------------------------------------------------------------------------


def write_mixed_folder(root):
    """Images of mixed sizes, modes and formats in nested folders, plus junk; returns the usable count."""
    (root / "a" / "b").mkdir(parents=True)
    (root / "c").mkdir()
    (root / ".hidden").mkdir()
    Image.new("RGB", (20, 12), (255, 0, 0)).save(root / "red.png")
    Image.new("L", (9, 30), 200).save(root / "a" / "gray.jpg", quality=100)
    Image.new("RGBA", (16, 16), (0, 0, 255, 0)).save(root / "a" / "transparent.png")  # on white
    palette = Image.new("P", (10, 10), 0)
    palette.putpalette([0, 255, 0] * 256)
    palette.save(root / "a" / "b" / "green.gif")
    Image.new("CMYK", (14, 14), (0, 0, 0, 0)).save(root / "a" / "b" / "white_cmyk.tif")
    Image.fromarray(np.full((11, 11), 257 * 100, np.uint16)).save(root / "c" / "deep16.png")
    Image.new("RGB", (8, 8)).save(root / ".hidden" / "ignored.png")
    (root / "notes.txt").write_text("not an image")
    (root / "c" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(100))
    full = root / "c" / "full.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(full)
    (root / "c" / "truncated.jpg").write_bytes(full.read_bytes()[:300])
    return 7


def test_folder_mixed_sizes_modes_and_corrupt_files(tmp_path, caplog):
    expected = write_mixed_folder(tmp_path)
    config = {"source": f"folder:{tmp_path}", "image_size": 8, "channels": 3}
    with caplog.at_level(logging.WARNING):
        source = jd.make_source(config)
    assert len(source) == expected
    assert "skipped 2 of 9 image files" in caplog.text
    images = {os.path.relpath(f, tmp_path): source[i]["image"] for i, f in enumerate(source.files)}
    assert sorted(images) == sorted(
        [
            "red.png",
            "a/gray.jpg",
            "a/transparent.png",
            "a/b/green.gif",
            "a/b/white_cmyk.tif",
            "c/deep16.png",
            "c/full.jpg",
        ]
    )
    for image in images.values():
        assert image.shape == (8, 8, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(images["red.png"], np.broadcast_to([255, 0, 0], (8, 8, 3)))
    assert np.abs(images["a/gray.jpg"].astype(int) - 200).max() <= 2
    np.testing.assert_array_equal(images["a/transparent.png"], np.full((8, 8, 3), 255))
    np.testing.assert_array_equal(images["a/b/green.gif"], np.broadcast_to([0, 255, 0], (8, 8, 3)))
    np.testing.assert_array_equal(images["a/b/white_cmyk.tif"], np.full((8, 8, 3), 255))
    np.testing.assert_array_equal(images["c/deep16.png"], np.full((8, 8, 3), 100))  # 16-bit scaled to 8
    gray = jd.make_source({**config, "channels": 1})
    red = gray[gray.files.index(str(tmp_path / "red.png"))]["image"]
    np.testing.assert_array_equal(red, np.full((8, 8, 1), 76))  # ITU-R 601 luma of pure red
    batch = next(jd.make_train_iterator(config, global_batch_size=4, seed=0))
    assert batch["image"].shape == (4, 8, 8, 3)


def test_folder_center_crop_keeps_the_middle(tmp_path):
    array = np.zeros((10, 30), np.uint8)
    # A white middle wider than the kept square (so the filter sees no black there), black sides.
    array[:, 5:25] = 255
    Image.fromarray(array).save(tmp_path / "wide.png")
    cropped = jd.make_source({"source": f"folder:{tmp_path}", "image_size": 5, "channels": 1})[0]["image"]
    np.testing.assert_array_equal(cropped, np.full((5, 5, 1), 255))
    squashed = jd.make_source(
        {"source": f"folder:{tmp_path}", "image_size": 6, "channels": 1, "center_crop": False}
    )
    image = squashed[0]["image"][..., 0]
    assert image[:, 0].max() < 64 and image[:, -1].max() < 64 and image[:, 3].min() > 235


def test_folder_errors(tmp_path):
    assert_one_line_error("does not exist", jd.make_source, {"source": f"folder:{tmp_path / 'missing'}"})
    assert_one_line_error("holds no image files", jd.make_source, {"source": f"folder:{tmp_path}"})
    (tmp_path / "readme.txt").write_text("hi")
    assert_one_line_error("holds no image files", jd.make_source, {"source": f"folder:{tmp_path}"})
    (tmp_path / "x.png").write_bytes(b"garbage")
    (tmp_path / "y.jpg").write_bytes(b"\xff\xd8\xff garbage")
    message = assert_one_line_error("no usable images", jd.make_source, {"source": f"folder:{tmp_path}"})
    assert str(tmp_path) in message and "all 2 image files" in message


# -- hf: --------------------------------------------------------------------------------------------------


def test_hf_source_from_a_local_dataset(tmp_path):
    datasets = pytest.importorskip("datasets", reason="the optional `datasets` package is not installed")
    images = [Image.fromarray(example_pixels(i, 8, 3)) for i in range(6)]
    dataset = datasets.Dataset.from_dict({"img": images, "label": [i % 2 for i in range(6)]})
    dataset = dataset.cast_column("img", datasets.Image())
    datasets.DatasetDict({"train": dataset}).save_to_disk(str(tmp_path / "local"))
    source = jd.make_source(
        {"source": f"hf:{tmp_path / 'local'}", "image_key": "img", "image_size": 8, "channels": 1}
    )
    assert len(source) == 6
    np.testing.assert_array_equal(source[4]["image"], example_pixels(4, 8, 1))
    assert source[3]["label"] == 1
    assert_one_line_error("no column", jd.make_source, {"source": f"hf:{tmp_path / 'local'}"})
    assert_one_line_error(
        "no split", jd.make_source, {"source": f"hf:{tmp_path / 'local'}:test", "image_key": "img"}
    )


def test_hf_without_datasets_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    assert_one_line_error(
        "pip install datasets", jd.make_source, {"source": "hf:huggan/smithsonian_butterflies_subset"}
    )


# -- bad input --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"source": "s3:bucket"}, "unknown data.source 's3:bucket'"),
        ({"source": "digit"}, "unknown data.source 'digit'"),
        ({"source": "folder"}, "unknown data.source 'folder'"),
        ({"source": "tfds:"}, "names no dataset"),
        ({"channels": 2}, r"data.channels=2 is not allowed; use 1 \(grayscale\) or 3"),
        ({"image_size": 0}, "data.image_size=0 must be a positive integer"),
        ({"image_size": -8}, "data.image_size=-8"),
        ({"image_size": "16"}, "data.image_size='16'"),
        ({"random_flip": "yes"}, "data.random_flip='yes' must be a bool"),
        ({"num_workers": -1}, "data.num_workers=-1"),
        ({"imagesize": 16}, "unknown data config key 'imagesize'"),
    ],
)
def test_bad_data_config(config, match):
    assert_one_line_error(match, jd.make_source, {**DIGITS, **config})


def test_bad_tfds_names_fail_fast_and_offline(tfds_dir):
    base = {"data_dir": tfds_dir, "image_size": 8}
    message = assert_one_line_error(
        "unknown TFDS dataset 'no_such_dataset_xyz'",
        jd.make_source,
        {**base, "source": "tfds:no_such_dataset_xyz"},
    )
    assert "tfds.list_builders()" in message
    assert_one_line_error(
        "split 'valid': Unknown split", jd.make_source, {**base, "source": "tfds:jaxdiff_tiny_tensor:valid"}
    )
    # A catalog dataset that is not prepared in data_dir: no download unless asked.
    assert_one_line_error("'mnist' is not prepared", jd.make_source, {**base, "source": "tfds:mnist"})
    assert_one_line_error(
        "no feature data.image_key='img'",
        jd.make_source,
        {**base, "source": "tfds:jaxdiff_tiny_tensor", "image_key": "img"},
    )


def test_bad_batch_and_process_arguments():
    assert_one_line_error(
        "global batch size 10 is not divisible by the process count 4",
        jd.make_train_iterator,
        DIGITS,
        global_batch_size=10,
        seed=0,
        process_count=4,
    )
    assert_one_line_error("batch size 0", jd.make_train_iterator, DIGITS, global_batch_size=0, seed=0)
    assert_one_line_error(
        "process_index=2",
        jd.make_train_iterator,
        DIGITS,
        global_batch_size=4,
        seed=0,
        process_index=2,
        process_count=2,
    )
    assert_one_line_error("eval images -1", jd.make_eval_images, DIGITS, -1, seed=0)
