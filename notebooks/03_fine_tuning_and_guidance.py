# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Fine-tuning and guidance
#
# This notebook follows unit 2 of the
# [Hugging Face Diffusion Models Class](https://github.com/huggingface/diffusion-models-class),
# **"Fine-Tuning and Guidance"**, section by section, and then its companion chapter,
# **"Class-conditioned diffusion model"**, with [jaxdiff](../README.md). Keep the course open next to it
# (`notebooks/README.md` has the full map).
#
# You will:
#
# - load a trained model and sample it quickly with **DDIM**,
# - **fine-tune** it on new data, starting from its weights (`train.init_from`),
# - **guide** sampling with a differentiable loss on the predicted image (the course's colour guidance),
# - train a **class-conditioned** model with label dropout and sample it with **classifier-free guidance**,
# - **export** that model as a diffusers pipeline and check it against PyTorch diffusers.
#
# The course starts from pipelines on the Hugging Face Hub (faces, butterflies, MNIST). This notebook runs
# offline on a CPU, on scikit-learn's bundled handwritten digits (16x16, grayscale): it trains its own
# "pre-trained" model on the digits 0-4 first, then fine-tunes it on the digits 5-9.
#
# ### How the JAX version differs from the course, and why
#
# - **Training is `train.py`, called as a function.** The course writes its fine-tuning loop by hand
#   (notebook 01 writes one too). This notebook calls `train_and_evaluate(config, workdir)`, the function
#   behind `train.py`, so that every run is an ordinary run directory (checkpoints, EMA weights, a diffusers
#   export) that `sample.py` and `train.init_from` read. Each call prints the `train.py` command it equals.
# - **Guidance is part of the compiled sampler.** The course edits the sampling loop and calls
#   `torch.autograd.grad` at each step. In jaxdiff a loss is an argument of the sampler: each step takes
#   `jax.grad` of the loss through the model inside the same `lax.scan`, for every sampler.
# - **Explicit random keys, NHWC, `jax.jit`**, as in notebooks 01 and 02.

# %% [markdown]
# ## Setup and imports
#
# The course installs `diffusers`, `open_clip_torch` and `wandb` and logs in to the Hub. Here, from a
# checkout of jaxdiff: `pip install -e ".[notebooks]"` (and `pip install diffusers torch` to check the
# export in PyTorch at the end). Nothing is downloaded.

# %%
import json
import os
import shutil

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from PIL import Image

import jaxdiff
from jaxdiff import grids
from jaxdiff.data import make_source
from jaxdiff.evaluation.digits import digits_metric
from jaxdiff.inference import generate, load_pretrained, load_workdir
from jaxdiff.run_config import default_config
from jaxdiff.training.trainer import train_and_evaluate

# FAST: tiny settings so that a test can run the whole notebook in a minute or two. Leave it unset.
FAST = os.environ.get("JAXDIFF_NOTEBOOK_FAST", "0") == "1"
print(f"jaxdiff {jaxdiff.__version__}, JAX {jax.__version__}, devices {jax.devices()}")
print(f"FAST={FAST}")
WORKDIRS = os.path.abspath("workdirs_03")  # every run of this notebook goes here
shutil.rmtree(WORKDIRS, ignore_errors=True)  # start afresh: a run directory that exists would resume


def show_uint8(ax, grid, title=None):
    """Draw a uint8 [H, W, C] image (a grid from jaxdiff.grids) on a matplotlib axis."""
    ax.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=255)
    ax.set_axis_off()
    if title:
        ax.set_title(title)


def show_grid(ax, x, nrow=None, title=None):
    """Draw NHWC images in [-1, 1] as one grid on a matplotlib axis."""
    show_uint8(ax, grids.make_grid(np.asarray(x), nrow=nrow), title)


def show_images(x, nrow=None, title=None):
    """The course's show_images: a batch of NHWC images in [-1, 1] as one figure."""
    grid_h, grid_w = grids.make_grid(np.asarray(x), nrow=nrow).shape[:2]
    fig, ax = plt.subplots(figsize=(max(grid_w / 60, 3), max(grid_h / 60, 1.5)))
    show_grid(ax, x, nrow, title)
    plt.show()


# %% [markdown]
# Two image folders stand in for the course's two datasets: the digits 0-4 (what our "pre-trained" model
# learns) and the digits 5-9 (the new data it is fine-tuned on). jaxdiff reads a folder of images with
# `data.source = "folder:PATH"`, so we write the digits there as PNG files.

# %%
digits = make_source({"source": "digits", "image_size": 16, "channels": 1})
folders = {"0-4": os.path.join(WORKDIRS, "digits_0-4"), "5-9": os.path.join(WORKDIRS, "digits_5-9")}
for folder in folders.values():
    os.makedirs(folder)
for i in range(len(digits)):
    record = digits[i]
    folder = folders["0-4" if record["label"] < 5 else "5-9"]
    Image.fromarray(record["image"][..., 0]).save(os.path.join(folder, f"{i:04d}.png"))
fig, axs = plt.subplots(1, 2, figsize=(12, 3))
for ax, (name, folder) in zip(axs, folders.items(), strict=True):
    files = sorted(os.listdir(folder))
    print(f"digits {name}: {len(files)} images in {folder}")
    first = np.stack([np.asarray(Image.open(os.path.join(folder, f)))[..., None] for f in files[:24]])
    show_grid(ax, first.astype(np.float32) / 127.5 - 1, nrow=12, title=f"the digits {name}")
plt.show()


# %% [markdown]
# Every model here shares one run config: `configs/digits_ddpm.py`'s UNet and schedule (FAST: a tiny UNet and
# a few steps, for the test), with the data and the step count of each run.


# %%
def digits_run_config(source, num_steps, **train):
    """A run config like configs/digits_ddpm.py: 16x16 digits, the (32, 64, 64) UNet, the cosine schedule."""
    config = default_config()
    config.data.source = source
    config.model.layers_per_block = 1
    config.diffusion.beta_schedule = "squaredcos_cap_v2"
    if FAST:  # a tiny one-level UNet (quick to compile), for the notebook test only
        config.model.block_out_channels = (16,)
        config.model.down_block_types = ("DownBlock2D",)
        config.model.up_block_types = ("UpBlock2D",)
        config.model.add_attention = False
        config.model.norm_num_groups = 8
        config.train.batch_size = 16
        config.sample.num_samples = config.sample.batch_size = 16  # the run's final grid
    config.train.num_steps = num_steps
    config.train.learning_rate = 1e-3
    config.train.warmup_steps = min(100, num_steps // 10)
    config.train.weight_decay = 0.0
    config.train.adam_b1 = 0.9
    config.train.ema_decay = 0.999
    config.train.log_every = max(1, num_steps // 4)
    config.train.sample_every = 0  # this notebook draws its own grids
    config.train.checkpoint_every = num_steps
    config.sample.sampler = "ddim"
    config.sample.num_inference_steps = 10 if FAST else 50
    for key, value in train.items():
        config.train[key] = value
    return config


def train(config, workdir, flags=""):
    """train.py as a function; prints the equivalent command line."""
    print(f"python train.py --config configs/digits_ddpm.py --workdir {workdir} {flags}".strip())
    return train_and_evaluate(config, workdir)


# %% [markdown]
# ## Loading a pre-trained pipeline
#
# The course loads `google/ddpm-celebahq-256` from the Hub and samples it with its 1,000-step DDPM scheduler.
# Offline, we first make the pre-trained model ourselves: `configs/digits_ddpm.py` trained on the digits 0-4
# only.

# %%
base_steps = 30 if FAST else 800
base_dir = os.path.join(WORKDIRS, "base_0-4")
train(
    digits_run_config(f"folder:{folders['0-4']}", base_steps),
    base_dir,
    f"--config.data.source=folder:{folders['0-4']} --config.train.num_steps={base_steps}",
)

# %% [markdown]
# **Course cell:** `image_pipe = DDPMPipeline.from_pretrained("google/ddpm-celebahq-256")`. **JAX:**
# `load_workdir` reads a `train.py` run directory: its `config.json` says which model, and only the EMA
# weights are read from the newest checkpoint (no optimizer state). `load_pretrained` does the same for a
# diffusers folder.

# %%
base = load_workdir(base_dir)
print("image shape:", base.image_shape, "objective:", base.objective.name, "classes:", base.num_classes)
num_images = 16 if FAST else 32

# %% [markdown]
# ### Faster sampling with DDIM
#
# The course swaps the pipeline's DDPM scheduler (1,000 steps) for a `DDIMScheduler` with 40 steps. In
# jaxdiff the sampler is an argument: `sample_fn(sampler="ddim", num_inference_steps=40)` compiles a
# 40-step DDIM loop for this model (one `lax.scan`); `generate` runs it for as many batches as needed, batch
# `i` from `fold_in(PRNGKey(seed), i)`, so a seed gives the same images on any number of devices.
#
# **Course cell:** `for i, t in tqdm(enumerate(scheduler.timesteps)): ... scheduler.step(noise_pred, t, x)`.
# **JAX:** the loop is inside the compiled function; `intermediates_every` records $x_t$ and the predicted
# $\hat x_0$ along the way, the two rows the course plots.

# %%
ddim_steps = 10 if FAST else 40
ddim_fn = base.sample_fn(sampler="ddim", num_inference_steps=ddim_steps, batch_size=num_images)
base_images = generate(ddim_fn, base.params, seed=0, num_samples=num_images)
show_images(base_images, nrow=8, title=f"the pre-trained model (digits 0-4), DDIM {ddim_steps} steps")

# %%
strip_fn = base.sample_fn(
    sampler="ddim", num_inference_steps=ddim_steps, batch_size=4, intermediates_every=max(1, ddim_steps // 8)
)
_, frames = generate(strip_fn, base.params, seed=0, num_samples=4)
fig, axs = plt.subplots(2, 1, figsize=(12, 8))
show_uint8(axs[0], grids.make_process_strip(frames["x_t"]), "$x_t$")
show_uint8(axs[1], grids.make_process_strip(frames["pred_x0"]), r"predicted $\hat{x}_0$")
plt.show()

# %% [markdown]
# ## Fine-tuning
#
# Fine-tuning is training that starts from a trained model's weights instead of random ones. The course
# fine-tunes the faces model on butterflies (and on WikiArt, in its `finetune_model.py` script); we fine-tune
# the 0-4 model on the digits 5-9.
#
# **Course cell:** the training loop of unit 1 on `image_pipe.unet`, with a new `torch.optim.AdamW`.
# **JAX:** `train.init_from=<workdir>` starts a fresh run from that run's EMA weights (a diffusers folder
# works too). As the course advises:
#
# - a **fresh optimizer** from step 0 (the moments of the old run are not carried over), and a new schedule
#   and data are allowed; only the model must be the same (another architecture is a one-line error);
# - **fewer steps** than training from scratch: the model already knows how to draw strokes;
# - an **EMA** of the weights (`train.ema_decay`), which starts from the loaded weights, smooths the noisy
#   updates of a small batch. The course's other tip, gradient accumulation for big images in small memory, is
#   `train.microbatch_size` here (several passes per step, the same update).

# %%
finetune_steps = 20 if FAST else 300
finetune_dir = os.path.join(WORKDIRS, "finetuned_5-9")
train(
    digits_run_config(f"folder:{folders['5-9']}", finetune_steps, init_from=base_dir),
    finetune_dir,
    f"--config.data.source=folder:{folders['5-9']} --config.train.num_steps={finetune_steps} "
    f"--config.train.init_from={base_dir}",
)
finetuned = load_workdir(finetune_dir)

# %% [markdown]
# Each run logs its loss to `metrics.jsonl` (and TensorBoard). The fine-tuning run should start near where
# the base run ended, not at the loss of a random model: strokes are strokes, whatever the digit.


# %%
def logged_losses(workdir):
    """(steps, losses) of the training lines in a run's metrics.jsonl."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    rows = [r for r in rows if "loss" in r]
    return [r["step"] for r in rows], [r["loss"] for r in rows]


fig, ax = plt.subplots(figsize=(8, 3))
base_x, base_y = logged_losses(base_dir)
ft_x, ft_y = logged_losses(finetune_dir)
ax.plot(base_x, base_y, label="base run (digits 0-4)")
ax.plot(np.asarray(ft_x) + base_steps, ft_y, label="fine-tuning (digits 5-9)")
ax.set_xlabel("step")
ax.set_ylabel("loss")
ax.legend()
plt.show()

# %%
weight_changes = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), finetuned.params, base.params)
print("fine-tuned vs base weights, largest difference:", max(jax.tree.leaves(weight_changes)))

# %% [markdown]
# Same sampler, same seed, before and after. The digit classifier that `jaxdiff.evaluation` uses for its
# offline quality metric (a small MLP trained on the real digits) says which digits each model draws:

# %%
finetuned_fn = finetuned.sample_fn(sampler="ddim", num_inference_steps=ddim_steps, batch_size=num_images)
finetuned_images = generate(finetuned_fn, finetuned.params, seed=0, num_samples=num_images)
fig, axs = plt.subplots(1, 2, figsize=(12, 4))
show_grid(axs[0], base_images, nrow=8, title="before: the model of the digits 0-4")
show_grid(axs[1], finetuned_images, nrow=8, title="after fine-tuning on the digits 5-9")
plt.show()
classifier = digits_metric()
for name, images in [("before", base_images), ("after", finetuned_images)]:
    predicted = classifier.predict(grids.to_uint8(images))
    print(f"{name}: fraction of samples classified as 5-9: {np.mean(predicted >= 5):.2f}")

# %% [markdown]
# ### Saving and loading fine-tuned pipelines
#
# **Course cell:** `image_pipe.save_pretrained("my-finetuned-model")`. **JAX:** `train.py` exports the EMA
# weights at the end of every run as a diffusers pipeline folder, `<workdir>/diffusers/`, which
# `DDPMPipeline.from_pretrained`, `jaxdiff.inference.load_pretrained` and `sample.py --pretrained` load:

# %%
print(sorted(os.listdir(os.path.join(finetune_dir, "diffusers"))))
print(f"python sample.py --workdir {finetune_dir} --sampler ddim --steps 40 --num_samples 64")

# %% [markdown]
# ## Guidance
#
# Fine-tuning changes the model; guidance changes only the sampling. The course steers a sampler towards
# images of a chosen colour: at each step it predicts $\hat x_0$, measures a loss on it (`color_loss`, the
# mean distance of the pixels to a target colour), takes the gradient of that loss with respect to $x_t$ and
# moves $x_t$ a little against it before the scheduler's step.
#
# Our digits are grayscale, so the colour becomes **brightness**: the loss is the mean distance of the pixels
# to white (+1), and guidance should draw thicker, brighter digits.
#
# **Course cell:** `x = x.detach().requires_grad_()`, `loss = color_loss(x0) * guidance_loss_scale`,
# `cond_grad = torch.autograd.grad(loss, x)[0]`, `x = x.detach() - cond_grad`. **JAX:** pass
# `loss_fn(pred_x0, t) -> scalar` and `loss_scale` to the sampler; every step does that move inside the
# compiled loop with `jax.grad`, through the model (the course's "variant 2", the better and costlier one;
# its "variant 1" differentiates only the $\hat x_0$ formula, not the model).
#
# Two differences to keep in mind:
#
# - jaxdiff applies the loss to **each image alone** and sums, so an image's move does not depend on the batch
#   size or the device count. The course's loss is a batch mean, so its scale is divided by the batch size:
#   the course's `guidance_loss_scale = 40` for 8 images would be `loss_scale = 5` here. The right scale also
#   depends on the model and the image size: on the trained digits model, 5 turns every image white, 0.5
#   draws thick bright digits and 0.25 keeps them thinner (try a few).
# - Use DDIM or DDPM, as the course does. DPM-Solver++ and UniPC start at $t = 999$, where the predicted
#   $\hat x_0$ (and so the loss's gradient) is amplified most: a scale that suits DDIM overshoots there.


# %%
def brightness_loss(pred_x0, t):
    """Mean absolute distance of the predicted clean image ([1, H, W, 1] in [-1, 1]) to white."""
    return jnp.mean(jnp.abs(pred_x0 - 1.0))


guidance_scale_of_loss = 5.0 if FAST else 0.5  # FAST: the tiny, barely trained model needs a harder pull
unguided = generate(ddim_fn, base.params, seed=1, num_samples=num_images)
guided_fn = base.sample_fn(
    sampler="ddim",
    num_inference_steps=ddim_steps,
    batch_size=num_images,
    loss_fn=brightness_loss,
    loss_scale=guidance_scale_of_loss,
)
guided = generate(guided_fn, base.params, seed=1, num_samples=num_images)
print(f"mean brightness, unguided: {unguided.mean():.3f}, with brightness guidance: {guided.mean():.3f}")
fig, axs = plt.subplots(1, 2, figsize=(12, 4))
show_grid(axs[0], unguided, nrow=8, title="unguided")
show_grid(axs[1], guided, nrow=8, title=f"brightness guidance, loss_scale={guidance_scale_of_loss:g}")
plt.show()

# %% [markdown]
# Any differentiable function of $\hat x_0$ works. A target pattern instead of a colour: pull every image
# towards a bright left half and a dark right half (the scale sets how hard, at the cost of the digits'
# shapes).

# %%
half = np.where(np.arange(16) < 8, 1.0, -1.0)[None, None, :, None]
target_pattern = jnp.asarray(np.broadcast_to(half, (1, 16, 16, 1)))


def pattern_loss(pred_x0, t):
    return jnp.mean(jnp.abs(pred_x0 - target_pattern))


pattern_fn = base.sample_fn(
    sampler="ddim",
    num_inference_steps=ddim_steps,
    batch_size=num_images,
    loss_fn=pattern_loss,
    loss_scale=guidance_scale_of_loss,
)
patterned = generate(pattern_fn, base.params, seed=1, num_samples=num_images)
left, right = patterned[:, :, :8].mean(), patterned[:, :, 8:].mean()
print(f"pattern guidance: mean of the left half {left:.3f}, of the right half {right:.3f}")
show_images(patterned, nrow=8, title="pattern guidance: bright left, dark right")

# %% [markdown]
# ### CLIP guidance
#
# The course then guides with **CLIP** (`open_clip`): the loss is the distance between the CLIP embedding of
# $\hat x_0$ and that of a text prompt, so a text steers an unconditional model. It needs a CLIP model (a
# download) and RGB images large enough for CLIP to see something (224 pixels after resizing), so it is not
# run here. With jaxdiff it would be one more `loss_fn`: a CLIP image encoder written in JAX (or loaded with
# Hugging Face `transformers`' Flax CLIP), resizing and normalising $\hat x_0$ as CLIP expects, and the
# negative cosine similarity to the prompt's text embedding, on a model of RGB images (e.g.
# `configs/butterflies.py`). The course's extra tricks (several random crops per step, guidance on only some
# steps) are plain JAX around that loss.
#
# ### Sharing a custom sampling loop
#
# The course wraps its guided loop in a Gradio demo. Here the guided sampler is a plain jitted function
# (`guided_fn.fn(params, key, batch_index)`): call it from any app or script, or save images with
# `grids.save_grid`.

# %% [markdown]
# # Class-conditioned diffusion model
#
# The course's second chapter trains a model that takes the **class** as an extra input, on MNIST: its
# `ClassConditionedUnet` embeds the label (`nn.Embedding(10, 4)`) and appends the embedding to the image as
# extra input channels, then samples 8 images of each digit.
#
# **JAX:** jaxdiff uses diffusers' own mechanism instead: `UNet2DModel`'s class embedding
# (`num_class_embeds`), added to the timestep embedding, so the model exports to diffusers as is. And it goes
# one step further, as diffusers' pipelines and most peers do: **classifier-free guidance** (Ho & Salimans
# 2022). The model is trained with **label dropout**: each label becomes a "null" label with probability
# `train.cond_drop_prob` (0.1), so it also learns the unconditional model. At sampling time
#
# $$\hat\epsilon = \epsilon(x_t, \varnothing) + s\,\big(\epsilon(x_t, y) - \epsilon(x_t, \varnothing)\big)$$
#
# with the guidance scale $s$: 1 is the plain conditional model, larger values trade diversity for
# class fidelity. Both halves are one batched model call per step.
#
# ## Preparing the data
#
# The course's MNIST is 28x28; our digits are 16x16. `data.num_classes = 10` reads their labels (0-9); the
# model gets 11 class embeddings, id 10 being the null label.
#
# ## Creating and training the class-conditioned model

# %%
cond_steps = 40 if FAST else 1500
cond_dir = os.path.join(WORKDIRS, "digits_cond")
cond_config = digits_run_config("digits", cond_steps, cond_drop_prob=0.1)
cond_config.data.num_classes = 10
cond_config.sample.guidance_scale = 2.0  # the default scale of this run's grids and of sample.py
train(
    cond_config,
    cond_dir,
    f"--config.data.num_classes=10 --config.train.cond_drop_prob=0.1 --config.train.num_steps={cond_steps} "
    "--config.sample.guidance_scale=2",
)
cond = load_workdir(cond_dir)
print("classes:", cond.num_classes, "null label:", cond.null_label)

# %% [markdown]
# The run's own grid of its last step, `samples/step_XXXXXXX.png`, is drawn with the run's `sample` section:
# every class in turn, at the default guidance scale 2:

# %%
final_grid = np.asarray(Image.open(os.path.join(cond_dir, "samples", f"step_{cond_steps:07d}.png")))
fig, ax = plt.subplots(figsize=(6, 6))
show_uint8(ax, final_grid[..., None] if final_grid.ndim == 2 else final_grid, "train.py's final grid")
plt.show()

# %% [markdown]
# ## Sampling, with classifier-free guidance
#
# **Course cell:** `y = torch.arange(0, 10).repeat_interleave(8)`, then the DDPM loop with `net(x, t, y)`.
# **JAX:** `class_labels="all"` gives image $g$ the label $g \bmod 10$ (any list of labels works, as
# `sample.py --class_labels 0,1,2 | all`); `grids.rows_by_class` puts one class per row. The same seed at
# every guidance scale, and the digit classifier's accuracy on each grid:

# %%
per_class = 4 if FAST else 10
guidance_scales = [1.0, 2.0, 4.0]
fig, axs = plt.subplots(1, len(guidance_scales), figsize=(5 * len(guidance_scales), 6))
for ax, scale in zip(axs, guidance_scales, strict=True):
    cfg_fn = cond.sample_fn(
        sampler="ddim",
        num_inference_steps=ddim_steps,
        batch_size=10 * per_class,
        class_labels="all",
        guidance_scale=scale,
    )
    images = generate(cfg_fn, cond.params, seed=0, num_samples=10 * per_class)
    labels = cfg_fn.image_labels(10 * per_class)
    accuracy = classifier.accuracy(grids.to_uint8(images), labels)
    print(f"class accuracy at guidance {scale:g}: {accuracy:.2f}")
    rows, ncol = grids.rows_by_class(images, labels)
    show_grid(ax, rows, nrow=ncol, title=f"guidance scale {scale:g} (accuracy {accuracy:.2f})")
plt.show()

# %% [markdown]
# Each row should hold its digit. A little guidance makes the digits more typical and easier to recognise;
# too much over-shoots: with this small model, scale 4 gives grainy, distorted strokes, and the classifier's
# accuracy falls well below that at scale 2 (in a full run here: about 0.8 at 1, 0.9 at 2, 0.3 at 4). (In
# FAST mode the model is tiny and barely trained: expect blobs.) `benchmarks/quality.py` measures accuracy and
# Fréchet distance against the guidance scale on a fully trained model: the usual trade-off curve.
# `guidance_rescale` (Lin et al. 2023, as diffusers) is the other knob: it rescales the guided output towards
# the conditional output's standard deviation, which tames over-saturation at large scales.

# %% [markdown]
# ## Exporting the class-conditioned model to diffusers
#
# The export at the end of the run keeps the class embedding (`num_class_embeds = 11` in `unet/config.json`)
# and writes `jaxdiff.json` with the null label, which diffusers ignores and `load_pretrained` reads back:

# %%
export_dir = os.path.join(cond_dir, "diffusers")
reloaded = load_pretrained(export_dir)
print(sorted(os.listdir(export_dir)))
print("reloaded export, number of classes:", reloaded.num_classes)
print("reloaded export, null label:", reloaded.null_label)

# %% [markdown]
# In PyTorch, if `diffusers` and `torch` are installed (the cell says so and moves on when they are not): the
# exported `UNet2DModel` takes `class_labels` and gives the same output as the JAX model, up to float32
# rounding.

# %%
x_check = jax.random.normal(jax.random.key(3), (4, *cond.image_shape))
t_check = jnp.array([10, 250, 500, 999])
y_check = jnp.array([0, 3, 7, 10])  # 10: the null label
jax_out = np.asarray(jax.jit(cond.apply_fn)(cond.params, x_check, t_check, y_check))
try:
    import torch
    from diffusers import UNet2DModel
except ImportError:
    print("diffusers / torch are not installed: skipping the PyTorch check (pip install diffusers torch).")
else:
    torch_unet = UNet2DModel.from_pretrained(export_dir, subfolder="unet")
    x_nchw = torch.from_numpy(np.array(x_check)).permute(0, 3, 1, 2)  # NHWC -> NCHW
    with torch.no_grad():
        torch_out = torch_unet(
            x_nchw, torch.from_numpy(np.array(t_check)), class_labels=torch.from_numpy(np.array(y_check))
        ).sample
    difference = np.abs(torch_out.permute(0, 2, 3, 1).numpy() - jax_out).max()
    print("conditional UNet, PyTorch vs JAX, largest difference:", difference)

# %% [markdown]
# diffusers has no pipeline class for a class-conditional `UNet2DModel` with classifier-free guidance; its
# guided pipelines compute the same `uncond + s * (cond - uncond)` (and `rescale_noise_cfg`) that
# `jaxdiff.guidance.combine_cfg` does. From the command line:
#
# ```bash
# python sample.py --workdir workdirs/digits_cond --class_labels all --guidance_scale 3 --grid grid.png
# python sample.py --pretrained workdirs/digits_cond/diffusers --class_labels 0,1,2 --guidance_scale 2
# ```

# %% [markdown]
# # Summary and further exploration
#
# - A trained model is a starting point: `train.init_from` fine-tunes it on new data with a fresh optimizer,
#   in far fewer steps than training from scratch.
# - Guidance steers a trained model without training: any differentiable `loss_fn(pred_x0, t)` on the
#   predicted image, followed inside the compiled sampler.
# - Class-conditioning plus label dropout gives one model that samples any class, and classifier-free
#   guidance trades diversity for fidelity with one number.
#
# To try next:
#
# - Fine-tune with another schedule or prediction type (`diffusion.*` may change on fine-tuning), or from a
#   diffusers pipeline folder.
# - Combine them: loss guidance on the class-conditional model (`loss_fn` and `guidance_scale` together).
# - Guidance only on some steps, or a loss on $x_t$ instead of $\hat x_0$.
# - Unit 3 of the course (Stable Diffusion) is beyond jaxdiff's pixel-space UNets.
#
# The runs of this notebook stay in `workdirs_03/` beside it: sample them with `sample.py --workdir`, or
# delete the folder.
