"""Training: EMA and lr schedule against diffusers / torch, the train step, exact resume, preemption,
non-finite loss, checkpoint damage, and the diffusers export.

Peers: ``diffusers.training_utils.EMAModel``, ``diffusers.optimization.get_scheduler`` and
``torch.optim.AdamW`` + ``clip_grad_norm_``. Models are tiny (8/16 channels) and runs a few steps long.
"""

import json
import os
import signal

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxdiff.errors import UserError
from tests.conftest import ROOT, load_config


@pytest.fixture(scope="module", autouse=True)
def _module_compilation_cache(compilation_cache):
    """Every test here shares the session's XLA cache (the tiny model's step compiles once)."""
    yield


def tiny_config(**train):
    """configs/digits_ddpm.py with a tiny UNet (8/16 channels, attention at 8x8) and a few steps: the same run
    as test_cli.py's ``TINY`` flags, so both compile it once (shared XLA cache)."""
    config = load_config("digits_ddpm")
    model = config.model
    model.block_out_channels = (8, 16)
    model.down_block_types = ("DownBlock2D", "AttnDownBlock2D")
    model.up_block_types = ("AttnUpBlock2D", "UpBlock2D")
    model.layers_per_block = 1
    model.norm_num_groups = 4
    model.attention_head_dim = 4
    config.data.num_threads = 0
    t = config.train
    t.batch_size = 8
    t.num_steps = 6
    t.warmup_steps = 2
    t.learning_rate = 1e-3
    t.log_every = 1
    t.sample_every = 0
    t.checkpoint_every = 2
    t.keep_checkpoints = 10
    t.async_checkpointing = True
    t.eval_every = 0  # digits.py scores its samples at the end; tests/test_training_eval.py covers that
    for key, value in train.items():
        t[key] = value
    config.sample.num_samples = 4
    config.sample.batch_size = 4
    config.sample.num_inference_steps = 2
    return config


def assert_trees_equal(a, b):
    leaves_a, tree_a = jax.tree.flatten(a)
    leaves_b, tree_b = jax.tree.flatten(b)
    assert tree_a == tree_b
    for x, y in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# -- EMA: diffusers' EMAModel ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(decay=0.999, use_ema_warmup=True, inv_gamma=1.0, power=0.75),
        dict(decay=0.9, use_ema_warmup=True, inv_gamma=2.0, power=2 / 3, min_decay=0.3, update_after_step=3),
        dict(decay=0.95, use_ema_warmup=False),
        dict(decay=0.9999, use_ema_warmup=False, min_decay=0.9999),
    ],
)
def test_ema_matches_diffusers_ema_model(kwargs):
    torch = pytest.importorskip("torch")
    from diffusers.training_utils import EMAModel

    from jaxdiff.training.ema import make_ema_update

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    ema = EMAModel(net.parameters(), **kwargs)
    train = {
        "ema_decay": kwargs["decay"],
        "ema_min_decay": kwargs.get("min_decay", 0.0),
        "ema_update_after_step": kwargs.get("update_after_step", 0),
        "ema_use_warmup": kwargs["use_ema_warmup"],
        "ema_inv_gamma": kwargs.get("inv_gamma", 1.0),
        "ema_power": kwargs.get("power", 2 / 3),
    }
    update = jax.jit(make_ema_update(train))
    to_np = lambda params: [p.detach().numpy().copy() for p in params]
    ema_jax = [jnp.asarray(p) for p in to_np(net.parameters())]
    rng = np.random.default_rng(0)
    for step in range(1, 41):
        with torch.no_grad():  # an "optimizer step": any change of the weights
            for p in net.parameters():
                p.add_(torch.from_numpy(rng.normal(size=p.shape).astype(np.float32)))
        ema.step(net.parameters())
        ema_jax, decay = update(ema_jax, [jnp.asarray(p) for p in to_np(net.parameters())], jnp.int32(step))
        np.testing.assert_allclose(float(decay), ema.cur_decay_value, rtol=1e-6, atol=1e-7)
        for ours, theirs in zip(ema_jax, to_np(ema.shadow_params), strict=True):
            np.testing.assert_allclose(np.asarray(ours), theirs, rtol=1e-5, atol=1e-5)


# -- optimizer: diffusers' lr schedules, torch's AdamW + clipping ----------------------------------


@pytest.mark.parametrize(
    "lr_schedule, diffusers_name, warmup",
    [
        ("cosine", "cosine", 10),
        ("constant", "constant_with_warmup", 7),
        ("linear", "linear", 5),
        ("cosine", "cosine", 0),
    ],
)
def test_lr_schedule_matches_diffusers(lr_schedule, diffusers_name, warmup):
    torch = pytest.importorskip("torch")
    from diffusers.optimization import get_scheduler

    from jaxdiff.training.optimizer import make_lr_schedule

    num_steps, lr = 60, 3e-4
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = get_scheduler(diffusers_name, opt, num_warmup_steps=warmup, num_training_steps=num_steps)
    ours = make_lr_schedule(lr, lr_schedule=lr_schedule, warmup_steps=warmup, num_steps=num_steps)
    for step in range(num_steps):
        np.testing.assert_allclose(float(ours(step)), sched.get_last_lr()[0], rtol=1e-5, atol=lr * 1e-6)
        opt.step()
        sched.step()


def test_optimizer_matches_torch_adamw_with_clipping():
    torch = pytest.importorskip("torch")
    from diffusers.optimization import get_scheduler

    from jaxdiff.training.optimizer import make_optimizer

    train = dict(
        learning_rate=1e-2,
        lr_schedule="cosine",
        warmup_steps=3,
        num_steps=12,
        weight_decay=0.1,
        adam_b1=0.9,
        adam_b2=0.99,
        adam_eps=1e-8,
        grad_clip=0.5,
    )
    optimizer, _ = make_optimizer(train)
    rng = np.random.default_rng(1)
    w0 = rng.normal(size=(5, 3)).astype(np.float32)
    p = torch.nn.Parameter(torch.from_numpy(w0.copy()))
    topt = torch.optim.AdamW([p], lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)
    tsched = get_scheduler("cosine", topt, num_warmup_steps=3, num_training_steps=12)
    params = {"w": jnp.asarray(w0)}
    state = optimizer.init(params)
    for _ in range(12):
        g = rng.normal(size=w0.shape).astype(np.float32) * 3
        p.grad = torch.from_numpy(g.copy())
        torch.nn.utils.clip_grad_norm_([p], 0.5)
        topt.step()
        tsched.step()
        updates, state = optimizer.update({"w": jnp.asarray(g)}, state, params)
        params = jax.tree.map(lambda a, u: a + u, params, updates)
    np.testing.assert_allclose(np.asarray(params["w"]), p.detach().numpy(), rtol=1e-5, atol=1e-6)


# -- the train step --------------------------------------------------------------------------------


def test_train_step_reduces_the_loss_and_reports_metrics():
    from jaxdiff import sharding as mesh_lib
    from jaxdiff.data import make_train_iterator
    from jaxdiff.training.components import build_components, build_train_step

    config = tiny_config()  # 6 steps: warm-up to lr 1e-3 over 2, then cosine
    c = build_components(config)
    step = build_train_step(c)
    state = c.init_state()
    initial_params = jax.device_get(state.params)
    batch = next(make_train_iterator(config.data, global_batch_size=8, seed=0))
    batch = mesh_lib.global_batch({"image": batch["image"], "label": batch["label"]}, c.batch_sharding)
    assert batch["image"].sharding == c.batch_sharding
    losses, lrs = [], []
    for _ in range(6):  # one fixed batch: the step must fit it
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
        lrs.append(float(metrics["lr"]))
        assert bool(metrics["finite"]) and float(metrics["grad_norm"]) > 0
    assert int(state.step) == 6
    np.testing.assert_allclose(lrs, [float(c.lr_schedule(i)) for i in range(6)])
    assert lrs[0] == 0.0 and lrs[2] == pytest.approx(1e-3)
    assert np.mean(losses[-2:]) < 0.85 * np.mean(losses[:2]), losses
    # The EMA moved from the initial parameters towards the trained ones.
    moved = jax.tree.map(
        lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()), state.ema_params, initial_params
    )
    assert max(jax.tree.leaves(moved)) > 0


@pytest.mark.parametrize("objective", ["ddpm", "from_scratch"])
def test_microbatches_give_the_gradient_of_one_pass(objective):
    """2 microbatches of 4 images: the loss and the gradient of the one-pass step over the 8 images
    (SGD at lr 1, so the new parameters are ``params - grad``), to float rounding."""
    import optax

    from jaxdiff import sharding as mesh_lib
    from jaxdiff.training.components import build_components
    from jaxdiff.training.state import create_train_state
    from jaxdiff.training.step import make_loss_fn, make_train_step

    config = tiny_config()
    config.diffusion.objective = objective
    c = build_components(config)
    sgd = optax.sgd(1.0)
    host = create_train_state(jax.device_get(c.init_state().params), sgd, jax.random.PRNGKey(3))
    sharding = mesh_lib.tree_shardings(c.mesh, host)
    images = np.random.default_rng(0).uniform(-1, 1, (8, 16, 16, 1)).astype(np.float32)
    batch = mesh_lib.global_batch({"image": images, "label": np.zeros(8, np.int32)}, c.batch_sharding)
    results = {}
    for passes in (1, 2):
        step = make_train_step(
            apply_fn=c.apply_fn,
            loss_fn=make_loss_fn(config),
            optimizer=sgd,
            lr_schedule=optax.constant_schedule(1.0),
            ema_update=lambda ema, params, step: (ema, jnp.float32(0)),
            state_sharding=sharding,
            batch_sharding=c.batch_sharding,
            passes=passes,
            donate=False,
        )
        state, metrics = step(jax.device_put(host, sharding), batch)
        results[passes] = (jax.device_get(state.params), jax.device_get(metrics))
    (one_pass, m1), (split, m2) = results[1], results[2]
    assert float(m1["grad_norm"]) > 0
    np.testing.assert_allclose(float(m2["loss"]), float(m1["loss"]), rtol=1e-6)
    np.testing.assert_allclose(float(m2["grad_norm"]), float(m1["grad_norm"]), rtol=1e-5)
    start = jax.device_get(host.params)
    leaves = zip(jax.tree.leaves(split), jax.tree.leaves(one_pass), jax.tree.leaves(start), strict=True)
    for got, want, p0 in leaves:
        grad_scale = np.abs(np.asarray(want) - np.asarray(p0)).max()
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0, atol=1e-5 * grad_scale + 1e-7)


def test_microbatch_size_auto_and_its_errors():
    from flax import nnx

    from jaxdiff.models import create_model, functional
    from jaxdiff.run_config import parse_run_config
    from jaxdiff.sharding import make_mesh
    from jaxdiff.training.components import build_components, train_pass_count

    mesh = make_mesh()  # one CPU device
    for batch_size, image_size, size, dropout, want in [
        (64, 32, 0, 0.0, 4),  # automatic on a CPU: the course UNet (64 x 32x32x64 floats) in passes of 16
        (64, 16, 0, 0.0, 1),  # the digits UNet's activations (64 x 16x16x64) fit the caches: one pass
        (16, 32, 0, 0.0, 1),
        (40, 32, 0, 0.0, 4),  # the one rule of jaxdiff.execution.passes: 4 passes of 10 (2.5 MiB each)
        (64, 32, 0, 0.1, 1),  # dropout masks would depend on the device count: one pass
        (64, 16, 8, 0.1, 8),
        (64, 32, 64, 0.0, 1),
    ]:
        config = tiny_config(batch_size=batch_size, microbatch_size=size)
        config.data.image_size = image_size  # model.sample_size follows (tied)
        config.model.block_out_channels = (64, 128)
        config.model.dropout = dropout
        run = parse_run_config(config)
        assert run.model["sample_size"] == image_size
        params = functional(nnx.eval_shape(lambda run=run: create_model(run.model, rngs=nnx.Rngs(0))))[1]
        assert train_pass_count(run, mesh, params) == want, (batch_size, image_size, size, dropout)
    with pytest.raises(UserError, match=r"train.microbatch_size=3 must divide the per-device batch 8"):
        build_components(tiny_config(microbatch_size=3))


def test_non_finite_step_keeps_the_state_bitwise_and_a_good_step_follows():
    from jaxdiff import sharding as mesh_lib
    from jaxdiff.data import make_train_iterator
    from jaxdiff.training.components import build_components, build_train_step
    from jaxdiff.training.ema import make_ema_update

    config = tiny_config()
    c = build_components(config)
    step = build_train_step(c)
    raw = next(make_train_iterator(config.data, global_batch_size=8, seed=0))
    good = {"image": np.asarray(raw["image"]), "label": np.asarray(raw["label"])}
    poisoned = dict(good, image=good["image"].copy())
    poisoned["image"][0, 0, 0, 0] = np.nan
    state, _ = step(c.init_state(), mesh_lib.global_batch(good, c.batch_sharding))
    before = jax.device_get(state)  # the step donates its input: keep a host copy
    state, metrics = step(state, mesh_lib.global_batch(poisoned, c.batch_sharding))
    assert not bool(metrics["finite"]) and np.isnan(float(metrics["loss"]))
    after = jax.device_get(state)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), after, before)
    # The EMA decay reported is the one the refused update would have used.
    _, decay = make_ema_update(config.train)(before.ema_params, before.params, before.step + 1)
    assert float(metrics["ema_decay"]) == float(decay)
    state, metrics = step(state, mesh_lib.global_batch(good, c.batch_sharding))
    assert bool(metrics["finite"]) and int(state.step) == int(before.step) + 1


def test_unknown_objective_and_batch_size_are_user_errors():
    from jaxdiff import sharding as mesh_lib
    from jaxdiff.training.step import make_loss_fn

    config = tiny_config()
    config.diffusion.objective = "score"
    with pytest.raises(UserError, match="diffusion.objective='score'"):
        make_loss_fn(config)
    mesh = mesh_lib.make_mesh()
    with pytest.raises(UserError, match="multiple of the device count"):
        mesh_lib.check_batch_size(0, mesh)
    with pytest.raises(UserError, match="train.fsdp"):
        mesh_lib.make_mesh(fsdp=len(jax.devices()) + 1)


# -- the loop: exact resume after SIGTERM, non-finite loss, other model ----------------------------


def _signal_at(monkeypatch, step: int):
    """Send SIGTERM to this process when the loop assembles batch number ``step`` (1-based)."""
    from jaxdiff import sharding as mesh_lib

    real = mesh_lib.global_batch
    calls = {"n": 0}

    def global_batch(local, sharding):
        calls["n"] += 1
        if calls["n"] == step:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(local, sharding)

    monkeypatch.setattr(mesh_lib, "global_batch", global_batch)


@pytest.mark.slow
def test_sigterm_then_resume_is_bitwise_identical_to_one_run(tmp_path, monkeypatch):
    from jaxdiff.training.trainer import train_and_evaluate

    config = tiny_config(num_steps=6, checkpoint_every=4)  # cosine lr over 6 steps: resume must be exact
    once = train_and_evaluate(config, tmp_path / "once")
    assert (once.step, once.start_step, once.stopped_early) == (6, 0, False)

    with monkeypatch.context() as m:
        _signal_at(m, 3)
        first = train_and_evaluate(config, tmp_path / "split")
    assert (first.step, first.stopped_early) == (3, True)
    assert sorted(int(p.name) for p in (tmp_path / "split" / "checkpoints").iterdir()) == [3]
    assert not (tmp_path / "split" / "diffusers").exists()
    second = train_and_evaluate(config, tmp_path / "split")
    assert (second.start_step, second.step, second.stopped_early) == (3, 6, False)

    # Parameters, optimizer state, EMA, step and RNG: bitwise equal (same data order, same keys).
    assert_trees_equal(once.state, second.state)
    steps = [
        json.loads(line)["step"] for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps == [1, 2, 3, 4, 5, 6]
    once_losses = [
        json.loads(x)["loss"] for x in (tmp_path / "once" / "metrics.jsonl").read_text().splitlines()
    ]
    split_losses = [
        json.loads(x)["loss"] for x in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()
    ]
    assert once_losses == split_losses
    assert json.loads((tmp_path / "split" / "config.json").read_text())["train"]["num_steps"] == 6

    # Running again when done trains nothing and keeps the export.
    again = train_and_evaluate(config, tmp_path / "split")
    assert (again.start_step, again.step) == (6, 6)
    assert (tmp_path / "split" / "diffusers" / "model_index.json").exists()

    # A workdir of another model is refused before anything is written.
    other = tiny_config(num_steps=6)
    other.model.block_out_channels = (8, 8)
    before = (tmp_path / "split" / "config.json").read_bytes()
    with pytest.raises(
        UserError, match=r"different model config \(block_out_channels: \[8, 16\] -> \[8, 8\]\)"
    ):
        train_and_evaluate(other, tmp_path / "split")
    assert (tmp_path / "split" / "config.json").read_bytes() == before


@pytest.mark.slow
def test_non_finite_loss_stops_with_the_step_and_keeps_good_checkpoints(tmp_path, monkeypatch):
    from jaxdiff import sharding as mesh_lib
    from jaxdiff.training.trainer import NonFiniteLossError, train_and_evaluate

    real = mesh_lib.global_batch
    calls = {"n": 0}

    def poisoned(local, sharding):  # batch 3 holds a NaN pixel
        calls["n"] += 1
        if calls["n"] == 3:
            local = dict(
                local,
                image=np.where(
                    np.arange(local["image"].size).reshape(local["image"].shape) == 0, np.nan, local["image"]
                ).astype(np.float32),
            )
        return real(local, sharding)

    monkeypatch.setattr(mesh_lib, "global_batch", poisoned)
    config = tiny_config(num_steps=6, checkpoint_every=2)
    with pytest.raises(
        NonFiniteLossError, match=r"at step 3; stopped without saving it \(last good checkpoint: step 2\)"
    ):
        train_and_evaluate(config, tmp_path)
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()) == [2]


# -- checkpoints: atomic writes, damaged and partial checkpoints -----------------------------------


def _small_state(value: float):
    import optax

    from jaxdiff.training.state import create_train_state

    params = {"w": jnp.full((3, 2), value), "b": jnp.zeros((2,))}
    return create_train_state(params, optax.adam(1e-3), jax.random.PRNGKey(0))


def _abstract(state):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


def test_damaged_or_partial_latest_checkpoint_falls_back_to_the_previous_one(tmp_path):
    from jaxdiff.checkpointing import Checkpointer

    reports = []
    with Checkpointer(tmp_path / "ckpt", max_to_keep=5, log=reports.append) as ckpt:
        for step in (1, 2, 3):
            ckpt.save(step, _small_state(float(step)), meta={"fingerprint": "f"})
    # An interrupted write of step 4: orbax only ever renames complete checkpoints into place.
    (tmp_path / "ckpt" / "4.orbax-checkpoint-tmp-123").mkdir()
    # Damage step 3: remove its array data.
    for path in (tmp_path / "ckpt" / "3" / "state").rglob("*"):
        if path.is_file() and "metadata" not in path.name:
            path.write_bytes(b"garbage")

    with Checkpointer(tmp_path / "ckpt", max_to_keep=5, log=reports.append) as ckpt:
        # Removed before the constructor returns, not by a thread that could outlive a failing run.
        assert not (tmp_path / "ckpt" / "4.orbax-checkpoint-tmp-123").exists()
        assert ckpt.all_steps() == [1, 2, 3]
        restored = ckpt.restore(_abstract(_small_state(0.0)))
        assert restored.step == 2
        np.testing.assert_array_equal(np.asarray(restored.state.params["w"]), np.full((3, 2), 2.0))
        assert ckpt.all_steps() == [1, 2]
    assert any("incomplete checkpoint write for step 4" in r for r in reports), reports
    assert any("checkpoint 3 is damaged" in r for r in reports), reports
    assert not (tmp_path / "ckpt" / "4.orbax-checkpoint-tmp-123").exists()
    assert len(list((tmp_path / "ckpt.damaged").iterdir())) == 1


def test_unfinished_writes_are_removed_before_a_run_can_stop(tmp_path, monkeypatch):
    """Orbax removes unfinished writes in a background thread: a run refused before its first save must
    not exit while that thread still works (interpreter shutdown makes it print a traceback)."""
    import asyncio

    from orbax.checkpoint._src.path import temporary_paths

    from jaxdiff.checkpointing import Checkpointer

    listed = temporary_paths.is_path_temporary

    async def slow_listing(*args, **kwargs):  # a loaded machine, or a bucket far away
        await asyncio.sleep(1.0)
        return await listed(*args, **kwargs)

    monkeypatch.setattr(temporary_paths, "is_path_temporary", slow_listing)
    unfinished = tmp_path / "ckpt" / "4.orbax-checkpoint-tmp-123"
    unfinished.mkdir(parents=True)
    ckpt = Checkpointer(tmp_path / "ckpt", log=lambda message: None)
    assert not unfinished.exists()
    ckpt.close()


def test_checkpoint_of_another_structure_is_refused_without_moving_it(tmp_path):
    import optax

    from jaxdiff.checkpointing import Checkpointer
    from jaxdiff.training.state import create_train_state

    with Checkpointer(tmp_path, log=print) as ckpt:
        ckpt.save(1, _small_state(1.0))
    other = create_train_state(
        {"w": jnp.zeros((4, 2)), "b": jnp.zeros((2,))}, optax.adam(1e-3), jax.random.PRNGKey(0)
    )
    with (
        Checkpointer(tmp_path, log=print) as ckpt,
        pytest.raises(UserError, match=r"another structure \(ema_params/w has shape \(3, 2\) instead of"),
    ):
        ckpt.restore(_abstract(other))
    assert (tmp_path / "1").is_dir()


# -- images ----------------------------------------------------------------------------------------


def test_grid_and_strip_layout(tmp_path):
    from PIL import Image

    from jaxdiff.grids import make_grid, make_process_strip, save_grid, to_uint8

    np.testing.assert_array_equal(to_uint8(np.array([-1.0, 0.0, 1.0, 2.0])), [0, 128, 255, 255])
    images = np.stack([np.full((2, 3, 1), v, np.float32) for v in (-1.0, 1.0, 0.0)])
    grid = make_grid(images, nrow=2, padding=1, upscale=2)
    assert grid.shape == (2 * (4 + 1) + 1, 2 * (6 + 1) + 1, 1)
    assert (grid[1:5, 1:7] == 0).all() and (grid[1:5, 8:14] == 255).all() and (grid[6:10, 1:7] == 128).all()
    path = save_grid(tmp_path / "g.png", np.zeros((4, 8, 8, 3)))
    assert Image.open(path).size == (2 * 64 + 3 * 2, 2 * 64 + 3 * 2)  # 8x8 upscaled to 64x64
    frames = np.stack([np.full((2, 4, 4, 1), v, np.float32) for v in (-1.0, 1.0, 0.0)])  # [S=3, N=2]
    strip = make_process_strip(frames, padding=0, upscale=1)
    assert strip.shape == (2 * 4, 3 * 4, 1)
    assert (strip[:, :4] == 0).all() and (strip[:, 4:8] == 255).all() and (strip[:, 8:] == 128).all()
    with pytest.raises(UserError, match="C in"):
        make_grid(np.zeros((2, 4, 4, 2)))


# -- config validation -----------------------------------------------------------------------------


def test_config_validation_names_the_bad_key():
    from jaxdiff.run_config import validate_config

    cases = [
        (("train", "mixed_precision", "fp16"), "train.mixed_precision='fp16'"),
        (("train", "lr_schedule", "step"), "train.lr_schedule='step'"),
        (("sample", "sampler", "lms"), "sample.sampler='lms'"),
        (("sample", "num_inference_steps", 1001), "sample.num_inference_steps=1001"),
        (("model", "block_out_channels", (8, 10)), "norm_num_groups"),
        (("model", "down_block_types", ("DownBlock2D", "CrossAttnDownBlock2D")), "CrossAttnDownBlock2D"),
        (("train", "warmup_steps", -1), "train.warmup_steps=-1"),
        (("train", "learnin_rate", 0.1), "unknown config key 'train.learnin_rate'"),
        (("sample", "steps", 10), "unknown config key 'sample.steps'"),
    ]
    validate_config(tiny_config())
    for (section, key, value), message in cases:
        config = tiny_config()
        config[section][key] = value
        with pytest.raises(UserError, match=message.replace("(", r"\(").replace("[", r"\[")) as info:
            validate_config(config)
        assert "\n" not in str(info.value)

    # A model section that does not follow the data (here replaced wholesale, so untied) is refused.
    config = tiny_config()
    config.data.channels = 3
    config.model = ml_collections.ConfigDict(
        {"_class_name": "BasicUNet", "in_channels": 1, "out_channels": 3}
    )
    with pytest.raises(UserError, match=r"model.in_channels=1 is not allowed; it must equal data.channels=3"):
        validate_config(config)


def test_model_shape_follows_the_data_section():
    """The default config ties model.sample_size / in_channels / out_channels to the data section: a
    config or a --config flag sets the image size and channels once."""
    from jaxdiff.run_config import parse_run_config

    config = tiny_config()
    config.data.image_size, config.data.channels = 32, 3
    run = parse_run_config(config)
    assert (run.model["sample_size"], run.model["in_channels"], run.model["out_channels"]) == (32, 3, 3)
    assert run.image_shape == (32, 32, 3)


def test_a_warmup_longer_than_the_run_is_derived_not_refused():
    """--config.train.num_steps=20 on a recipe with a 100-step warm-up: the warm-up becomes num_steps - 1
    (the learning rate peaks at the last update), with one logged line; a constant schedule keeps it."""
    from jaxdiff.run_config import parse_run_config
    from jaxdiff.training.optimizer import make_lr_schedule

    config = load_config("digits_ddpm")
    config.train.num_steps = 20
    said = []
    run = parse_run_config(config, log=said.append)
    assert run.train.warmup_steps == 19 and config.train.warmup_steps == 100
    assert said == [
        "train.warmup_steps=100 is not below train.num_steps=20: warming up over 19 steps instead"
    ]
    schedule = make_lr_schedule(run.train.learning_rate, lr_schedule="cosine", warmup_steps=19, num_steps=20)
    assert float(schedule(0)) == 0.0 and float(schedule(19)) == pytest.approx(run.train.learning_rate)
    config.train.lr_schedule = "constant"
    said.clear()
    assert parse_run_config(config, log=said.append).train.warmup_steps == 100 and not said


def test_shipped_configs_are_valid_and_match_their_recipes():
    from jaxdiff.models import param_count
    from jaxdiff.run_config import (
        DIFFUSION_KEYS,
        SAMPLE_KEYS,
        TRAIN_KEYS,
        parse_run_config,
        validate_config,
    )

    names = sorted(p.stem for p in (ROOT / "configs").glob("*.py") if p.stem != "__init__")
    assert {"default", "digits", "digits_ddpm", "digits_cond", "cifar10_edm"} <= set(names)
    for name in names:
        validate_config(load_config(name))
    # The first run (README): class-conditional EDM, chosen by benchmarks/recipes.py, on the train split,
    # sampled without guidance; the DDPM recipe beside it.
    digits = parse_run_config(load_config("digits"))
    assert (digits.diffusion.objective, digits.sample.sampler, digits.sample.num_inference_steps) == (
        "edm",
        "edm",
        18,
    )
    assert (digits.train.num_steps, digits.train.batch_size, digits.train.eval_every) == (2500, 64, 2500)
    assert (digits.data.source, digits.num_classes, digits.sample.guidance_scale) == ("digits", 10, 1.0)
    assert parse_run_config(load_config("digits_edm")).num_classes is None  # EDM without the labels
    assert parse_run_config(load_config("digits_ddpm")).diffusion.objective == "ddpm"
    cond = parse_run_config(load_config("digits_cond"))
    assert (cond.num_classes, cond.null_label, cond.model["num_class_embeds"]) == (10, 10, 11)
    assert (cond.train.cond_drop_prob, cond.sample.guidance_scale) == (0.1, 1.5)
    default = load_config("default")  # sets every key the validator knows
    assert set(default.train) == set(TRAIN_KEYS) and set(default.sample) == set(SAMPLE_KEYS)
    assert set(default.diffusion) <= set(DIFFUSION_KEYS)
    cifar = load_config("cifar10")
    assert tuple(cifar.model.block_out_channels) == (128, 256, 256, 256)
    assert (cifar.train.batch_size, cifar.train.learning_rate, cifar.train.warmup_steps) == (128, 2e-4, 5000)
    assert (cifar.train.num_steps, cifar.train.ema_decay, cifar.model.dropout) == (800_000, 0.9999, 0.1)
    from flax import nnx

    from jaxdiff.models import create_model

    model = nnx.eval_shape(lambda: create_model(cifar.model, rngs=nnx.Rngs(0)))
    assert round(param_count(model) / 1e6, 1) == 35.7
    butterflies = load_config("butterflies")
    assert parse_run_config(butterflies).model["block_out_channels"] == (64, 128, 128, 256)
    assert butterflies.diffusion.beta_schedule == "squaredcos_cap_v2"
    assert (butterflies.train.learning_rate, butterflies.train.batch_size) == (4e-4, 64)


def test_fourier_weight_is_frozen_like_requires_grad_false():
    """diffusers' GaussianFourierProjection weight has requires_grad=False: torch's AdamW never touches it
    (no weight decay) and clip_grad_norm_ leaves it out. jaxdiff gives it a zero update."""
    from flax import nnx

    from jaxdiff import models
    from jaxdiff.training.optimizer import make_optimizer

    base = dict(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 8),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
        layers_per_block=1,
    )
    positional = models.create_model(base, rngs=nnx.Rngs(0))
    assert models.frozen_param_paths(positional) == ()
    fourier = models.create_model({**base, "time_embedding_type": "fourier"}, rngs=nnx.Rngs(0))
    frozen = models.frozen_param_paths(fourier)
    assert frozen == (("time_proj", "weight"),)

    train = dict(
        learning_rate=1e-2,
        lr_schedule="constant",
        warmup_steps=0,
        num_steps=10,
        weight_decay=0.5,
        adam_b1=0.9,
        adam_b2=0.999,
        adam_eps=1e-8,
        grad_clip=1.0,
    )
    _, params = models.functional(fourier)
    grads = jax.tree.map(jnp.ones_like, params)
    for frozen_paths in ((), frozen):
        optimizer, _ = make_optimizer(train, frozen_paths)
        updates, _ = optimizer.update(grads, optimizer.init(params), params)
        weight_update = np.abs(np.asarray(updates["time_proj"]["weight"][...])).max()
        assert (weight_update == 0) == bool(frozen_paths)
        assert np.abs(np.asarray(updates["conv_in"]["kernel"][...])).max() > 0
    # The clipping norm leaves the frozen weight out: the trained leaves' update is the same as with the
    # frozen leaf's gradient zeroed.
    optimizer, _ = make_optimizer(train, frozen)
    updates, _ = optimizer.update(grads, optimizer.init(params), params)
    zeroed = jax.tree_util.tree_map_with_path(
        lambda path, g: jnp.zeros_like(g) if "time_proj" in jax.tree_util.keystr(path) else g, grads
    )
    plain, _ = make_optimizer(train)
    reference, _ = plain.update(zeroed, plain.init(params), params)
    np.testing.assert_allclose(
        np.asarray(updates["conv_in"]["kernel"][...]),
        np.asarray(reference["conv_in"]["kernel"][...]),
        rtol=1e-6,
    )
