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
# # Introduction to jaxdiff
#
# This notebook follows **"Introduction to 🤗 Diffusers"**, the first hands-on chapter of unit 1 of the
# [Hugging Face Diffusion Models Class](https://github.com/huggingface/diffusion-models-class), section by
# section, with [jaxdiff](../README.md): diffusion models in JAX / Flax NNX whose schedules, samplers and UNet
# agree numerically with diffusers. Keep the course open next to it: every heading here is a heading there
# (`notebooks/README.md` has the full map).
#
# You will:
#
# - build a **noise schedule** and add noise to a batch of images with it,
# - define a **UNet** with the very same config keys as diffusers' `UNet2DModel`,
# - write the **training loop** yourself: one `jax.jit`-compiled step with `optax`,
# - generate images with a **sampler** (jaxdiff's "pipeline") and with a **hand-written loop**,
# - watch the **denoising process** and compare **DDPM and DDIM** at several step counts,
# - **save** the model as a diffusers pipeline folder and load it back, in JAX and in PyTorch diffusers.
#
# It runs offline on a CPU in a few minutes, on scikit-learn's bundled handwritten digits. With network access
# and the `datasets` package, set `JAXDIFF_NOTEBOOK_ONLINE=1` to train on the course's butterflies instead.
#
# ### How the JAX version differs from the course, and why
#
# A few idioms recur; each is pointed out where it first appears, next to the course cell it replaces.
#
# - **Explicit random keys.** PyTorch draws from a hidden global generator (`torch.randn`). JAX functions take
#   a PRNG key and you split keys to get fresh randomness, so every result is reproducible and a function's
#   output depends only on its inputs.
# - **Pure functions.** The model is split into `apply_fn(params, x, t)` and a `params` pytree; optimizer
#   state is another pytree. A training step takes them in and returns new ones instead of mutating a module.
# - **`jax.jit`.** Pure functions are compiled with XLA once (the first call takes a few seconds), then every
#   call is fast. A whole sampling loop is one compiled `lax.scan`.
# - **NHWC.** Images are `[batch, height, width, channels]` (PyTorch uses NCHW); that is the layout XLA and
#   TPUs prefer. jaxdiff converts weights to and from diffusers' layout when saving and loading.

# %% [markdown]
# ## Step 1: Setup
#
# The course installs `diffusers` and logs in to the Hugging Face Hub. Here, from a checkout of jaxdiff:
#
# ```bash
# pip install -e ".[notebooks]"      # jaxdiff + matplotlib, jupytext, ipykernel
# pip install -e ".[hf]"             # optional: `datasets`, for the butterflies
# pip install diffusers torch        # optional: to load the saved pipeline in PyTorch at the end
# ```
#
# No Hub login or git-lfs is needed to follow along: nothing is uploaded. Then the imports and a few
# helpers, the course's `show_images`:

# %%
import functools
import importlib.util
import os
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from flax import nnx

import jaxdiff
from jaxdiff import grids, samplers
from jaxdiff.data import make_source, make_train_iterator
from jaxdiff.interop import load_pipeline, save_pipeline
from jaxdiff.losses import make_diffusion_loss
from jaxdiff.models import create_model, functional, param_count
from jaxdiff.schedules import add_noise, make_schedule

# FAST: tiny settings so that a test can run the whole notebook in a minute or two. Leave it unset.
FAST = os.environ.get("JAXDIFF_NOTEBOOK_FAST", "0") == "1"
# ONLINE: use the course's butterflies from the Hugging Face Hub (needs network and `datasets`).
ONLINE = os.environ.get("JAXDIFF_NOTEBOOK_ONLINE", "0") == "1"
print(f"jaxdiff {jaxdiff.__version__}, JAX {jax.__version__}, devices {jax.devices()}")
print(f"FAST={FAST} ONLINE={ONLINE}")


def show_uint8(ax, grid, title=None):
    """Draw a uint8 [H, W, C] image (a grid from jaxdiff.grids) on a matplotlib axis."""
    ax.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=255)
    ax.set_axis_off()
    if title:
        ax.set_title(title)


def show_grid(ax, x, nrow=None, title=None):
    """Draw NHWC images in [-1, 1] as one grid on a matplotlib axis (grayscale or RGB)."""
    show_uint8(ax, grids.make_grid(np.asarray(x), nrow=nrow), title)


def show_images(x, nrow=None, title=None):
    """The course's show_images: a batch of NHWC images in [-1, 1] as one figure."""
    grid_h, grid_w = grids.make_grid(np.asarray(x), nrow=nrow).shape[:2]
    fig, ax = plt.subplots(figsize=(grid_w / 60, grid_h / 60))
    show_grid(ax, x, nrow, title)
    plt.show()


# %% [markdown]
# ## Dreambooth: a sneak peek at what's to come
#
# The course opens with a Stable Diffusion DreamBooth demo (a several-gigabyte text-to-image pipeline).
# jaxdiff covers unconditional and class-conditional pixel-space UNets only, so there is no twin of that
# cell; the rest of unit 1 is all here.

# %% [markdown]
# ## MVP (Minimum Viable Pipeline)
#
# diffusers splits a diffusion model into **pipelines**, **models** and **schedulers**. jaxdiff has the same
# parts as plain functions:
#
# | diffusers | jaxdiff |
# |---|---|
# | `UNet2DModel(...)` | `create_model(config)`; `apply_fn, params = functional(model)` |
# | `DDPMScheduler` for training (`add_noise`) | `make_schedule(...)`; `add_noise(schedule, x0, eps, t)` |
# | `DDPMScheduler`, `DDIMScheduler`, ... for sampling | `samplers.from_diffusers_config(config, steps)` |
# | `DDPMPipeline(unet, scheduler)()` | `samplers.sample(sampler, model_fn, x_T, key)`: one `lax.scan` |
# | `save_pretrained(path)` / `from_pretrained(path)` | `save_pipeline(path, ...)` / `load_pipeline(path)` |
#
# Our "pipeline" is the function below: noise in, images out. It is compiled once per sampler and step
# count. (`apply_fn` and the batch size are static arguments of `jax.jit`: changing them recompiles.)
#
# **Course cell:** `butterfly_pipeline(batch_size=8).images`. **JAX:** the pipeline takes the parameters and
# a PRNG key explicitly, so the same key gives the same images.


# %%
@functools.partial(jax.jit, static_argnames=("apply_fn", "shape", "intermediates_every"))
def generate(apply_fn, params, sampler, key, shape, intermediates_every=None):
    """Sample images of `shape` (NHWC) with `sampler`, from the standard normal noise drawn from `key`."""
    noise_key, sample_key = jax.random.split(key)
    x_T = jax.random.normal(noise_key, shape)
    model_fn = lambda x, t: apply_fn(params, x, t)
    return samplers.sample(sampler, model_fn, x_T, sample_key, intermediates_every=intermediates_every)


# %% [markdown]
# The course then samples from a pretrained 32-pixel butterfly pipeline on the Hub
# (`johnowhitaker/ddpm-butterflies-32px`). With `JAXDIFF_NOTEBOOK_ONLINE=1` and `huggingface_hub` installed,
# the cell below downloads that very diffusers folder and samples from it in JAX; offline it is skipped.

# %%
if ONLINE and importlib.util.find_spec("huggingface_hub") is not None:
    from huggingface_hub import snapshot_download

    butterfly_dir = snapshot_download("johnowhitaker/ddpm-butterflies-32px")
    b_apply_fn, b_params, b_unet_config, b_scheduler_config = load_pipeline(butterfly_dir)
    # Keep only the schedule keys of the (older) pipeline's scheduler config.
    b_sampler = samplers.from_diffusers_config(
        samplers.scheduler_config_for("ddpm", b_scheduler_config), 1000
    )
    size = b_unet_config["sample_size"]
    show_images(generate(b_apply_fn, b_params, b_sampler, jax.random.key(0), (8, size, size, 3)), nrow=8)
else:
    print("Offline: skipping the pretrained butterfly pipeline (set JAXDIFF_NOTEBOOK_ONLINE=1 to try it).")

# %% [markdown]
# Training a diffusion model, as the course recalls, goes like this:
#
# 1. Load some images from the training data.
# 2. Add noise, in different amounts.
# 3. Feed the noisy versions of the inputs into the model.
# 4. Evaluate how well the model does at denoising these inputs.
# 5. Use this information to update the model weights, and repeat.
#
# We take these steps one at a time, then sample from the trained model and save it as a pipeline.

# %% [markdown]
# ## Step 2: Download a training dataset
#
# The course loads 1,000 butterfly pictures (`huggan/smithsonian_butterflies_subset`) at 32x32 with random
# horizontal flips, normalised to [-1, 1], in batches of 64. `jaxdiff.data` does the same from a small config
# dict: `make_source` gives random access to the images, `make_train_iterator` an endless, shuffled,
# checkpointable stream of batches `{"image": float32 [B, H, W, C] in [-1, 1], "label": int32 [B]}`.
#
# Offline, the source is `digits:all`: scikit-learn's 1,797 handwritten digits (8x8), upsampled to 16x16
# (plain `digits` is the 1,397 of them that the digits metric does not hold out).
#
# **Course cell:** `torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True)`.
# **JAX:** a [grain](https://github.com/google/grain) pipeline whose order is set by `seed`, and images come
# out NHWC (`transforms.ToTensor()` makes NCHW).

# %%
if ONLINE and importlib.util.find_spec("datasets") is not None:
    data_config = {
        "source": "hf:huggan/smithsonian_butterflies_subset",
        "image_size": 32,
        "channels": 3,
        "random_flip": True,
    }
else:
    if ONLINE:
        print("The `datasets` package is not installed: using the bundled digits.")
    data_config = {"source": "digits:all", "image_size": 16, "channels": 1}
image_size, channels = data_config["image_size"], data_config["channels"]
batch_size = 16 if FAST else 64

source = make_source(data_config)
train_iter = make_train_iterator(data_config, global_batch_size=batch_size, seed=0)
print(f"{len(source)} training images")

# %%
xb = next(train_iter)["image"][:8]
print("X shape:", xb.shape)
show_images(xb, nrow=8)

# %% [markdown]
# ## Step 3: Define the scheduler
#
# During training we add noise to the images; during sampling we remove it step by step. diffusers puts both
# in a scheduler; jaxdiff separates the **noise schedule** (this step) from the **samplers** (step 6).
#
# The DDPM forward process adds a little Gaussian noise at each of $T$ steps,
# $q(x_t \mid x_{t-1}) = \mathcal{N}(x_t; \sqrt{1 - \beta_t}\, x_{t-1}, \beta_t I)$, and in closed form
# $q(x_t \mid x_0) = \mathcal{N}(x_t; \sqrt{\bar\alpha_t}\, x_0, (1 - \bar\alpha_t) I)$ with
# $\bar\alpha_t = \prod_{s \le t} (1 - \beta_s)$.
#
# **Course cell:** `noise_scheduler = DDPMScheduler(num_train_timesteps=1000)`. **JAX:**
# `make_schedule(num_train_timesteps=1000)` takes the same arguments (`beta_schedule`, `beta_start`, ...) and
# returns a `NoiseSchedule` pytree of `betas`, `alphas` and `alphas_cumprod` that agree with diffusers'.

# %%
schedule = make_schedule(num_train_timesteps=1000)


def plot_schedule(ax, schedule, title=None):
    alphas_cumprod = np.asarray(schedule.alphas_cumprod)
    ax.plot(alphas_cumprod**0.5, label=r"$\sqrt{\bar{\alpha}_t}$")
    ax.plot((1 - alphas_cumprod) ** 0.5, label=r"$\sqrt{1 - \bar{\alpha}_t}$")
    ax.set_xlabel("timestep t")
    ax.legend(fontsize="large")
    if title:
        ax.set_title(title)


fig, ax = plt.subplots(figsize=(6, 4))
plot_schedule(ax, schedule)
plt.show()

# %% [markdown]
# $\sqrt{\bar\alpha_t}$ scales the image and $\sqrt{1 - \bar\alpha_t}$ the noise. **Exercise** (as in the
# course): compare other settings. Too little noise never reaches pure noise; the cosine schedule
# (`squaredcos_cap_v2`) destroys information more slowly, which suits small images.

# %%
fig, axs = plt.subplots(1, 3, figsize=(15, 4))
plot_schedule(axs[0], make_schedule(1000), "linear (the default)")
plot_schedule(axs[1], make_schedule(1000, beta_start=0.001, beta_end=0.004), "too little noise")
plot_schedule(axs[2], make_schedule(1000, beta_schedule="squaredcos_cap_v2"), "squaredcos_cap_v2 (cosine)")
plt.show()

# %% [markdown]
# Whichever schedule you pick, `add_noise` noises a batch at given timesteps.
#
# **Course cell:** `noise = torch.randn_like(xb)`. **JAX:** randomness comes from a key you own:
# `jax.random.split` gives a fresh subkey, and the same key always gives the same noise.

# %%
key = jax.random.key(0)
key, noise_key = jax.random.split(key)
timesteps = jnp.linspace(0, 999, 8).astype(jnp.int32)  # torch.linspace(0, 999, 8).long()
noise = jax.random.normal(noise_key, xb.shape)
noisy_xb = add_noise(schedule, xb, noise, timesteps)
print("Noisy X shape", noisy_xb.shape, "at timesteps", timesteps)
show_images(noisy_xb, nrow=8)

# %% [markdown]
# ## Step 4: Define the model
#
# The model is a UNet: ResNet blocks that halve the resolution on the way down, the same number on the way up,
# and skip connections between them, so the output has the input's shape. jaxdiff's `UNet2D` takes diffusers'
# `UNet2DModel` config keys with the same meaning, and loads and saves diffusers weights.
#
# The course's model for 32x32 butterflies has four levels, `(64, 128, 128, 256)` channels and
# self-attention in the two lowest. For 16x16 digits on a CPU we use a smaller one (the one in
# `configs/digits.py`): three levels with attention only at 4x4.
#
# **Course cell:** `model = UNet2DModel(sample_size=image_size, ...)`. **JAX:** `create_model` builds a Flax
# NNX module from the same keys and `functional` splits it into a pure `apply_fn(params, x, t)` plus its
# `params` (a pytree of arrays), the form `jax.jit`, `jax.grad` and `optax` work with. There is no
# `model.to(device)`: arrays live on the default device (a GPU or TPU when there is one).

# %%
course_unet = dict(
    sample_size=image_size,
    in_channels=channels,
    out_channels=channels,
    layers_per_block=2,  # how many ResNet layers per UNet block
    block_out_channels=(64, 128, 128, 256),  # more channels -> more parameters
    down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
)
if data_config["source"] == "digits:all":
    model_config = dict(
        course_unet,
        layers_per_block=1,
        block_out_channels=(32, 64, 64),
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    )
else:
    model_config = course_unet
if FAST:  # a tiny UNet, for the notebook test only
    model_config = dict(
        model_config,
        layers_per_block=1,
        block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    )

model = create_model(model_config, rngs=nnx.Rngs(0))
apply_fn, params = functional(model)
print(f"{param_count(params):,} parameters")

# %% [markdown]
# A batch of data and some timesteps in, a prediction of the same shape out. (`jax.jit(apply_fn)` compiles
# the model once for these shapes; we reuse `model_fn` below.)

# %%
model_fn = jax.jit(apply_fn)
model_prediction = model_fn(params, noisy_xb, timesteps)
print(model_prediction.shape)

# %% [markdown]
# ## Step 5: Create a training loop
#
# For each batch we sample random timesteps, noise the images accordingly, ask the model for the noise, and
# take an AdamW step on the mean squared error between predicted and true noise. The course uses the cosine
# schedule and AdamW at a learning rate of 4e-4 for 30 epochs.
#
# **Course cell:** the `for epoch ... for step, batch in enumerate(train_dataloader)` loop with
# `loss.backward()`, `optimizer.step()` and `optimizer.zero_grad()`. **JAX:** the body of that loop becomes
# one pure function `train_step(params, opt_state, batch, key) -> (params, opt_state, loss)`:
#
# - the noise and the timesteps come from the `key` argument (`torch.randn` and `torch.randint` use a
#   global generator),
# - `jax.value_and_grad` returns the loss and the gradients (no `.backward()`, nothing to zero),
# - `optax.adamw` returns updates that we apply to get *new* parameters (no in-place `optimizer.step()`),
# - `@jax.jit` compiles the whole step once: the first call is slow, the next ones fast.
#
# `torch.optim.AdamW`'s default weight decay is 0.01 (optax's is 1e-4), so we pass it explicitly.

# %%
noise_schedule = make_schedule(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
optimizer = optax.adamw(learning_rate=4e-4, weight_decay=0.01)
opt_state = optimizer.init(params)


@jax.jit
def train_step(params, opt_state, clean_images, key):
    noise_key, t_key = jax.random.split(key)
    # Sample noise to add to the images, and a random timestep for each image.
    noise = jax.random.normal(noise_key, clean_images.shape)
    bs = clean_images.shape[0]
    timesteps = jax.random.randint(t_key, (bs,), 0, noise_schedule.num_train_timesteps)
    # Add noise to the clean images according to the noise magnitude at each timestep.
    noisy_images = add_noise(noise_schedule, clean_images, noise, timesteps)

    def loss_fn(params):
        noise_pred = apply_fn(params, noisy_images, timesteps)
        return jnp.mean((noise_pred - noise) ** 2)

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss


# %% [markdown]
# The course trains 30 epochs of 1,000 butterflies (about 470 steps of 64 images). On the digits we take about
# the same number of steps (16 passes over the 1,797 digits), a few minutes on a laptop CPU.

# %%
num_epochs = 2 if FAST else (30 if data_config["source"] != "digits:all" else 16)
steps_per_epoch = 2 if FAST else len(source) // batch_size
key = jax.random.key(42)
losses = []
start = time.time()
for epoch in range(num_epochs):
    for _ in range(steps_per_epoch):
        clean_images = next(train_iter)["image"]
        key, step_key = jax.random.split(key)
        params, opt_state, loss = train_step(params, opt_state, clean_images, step_key)
        losses.append(loss)  # a device array: reading it (float) would wait for the step to finish
    if (epoch + 1) % 4 == 0 or epoch + 1 == num_epochs:
        loss_last_epoch = np.mean([float(x) for x in losses[-steps_per_epoch:]])
        print(f"Epoch:{epoch + 1}, loss: {loss_last_epoch:.4f} ({time.time() - start:.0f}s)")
losses = np.array([float(x) for x in losses])

# %% [markdown]
# The model improves quickly at first, then more slowly (clearer on the log scale, right):

# %%
fig, axs = plt.subplots(1, 2, figsize=(12, 4))
axs[0].plot(losses)
axs[0].set_title("loss")
axs[1].plot(np.log(losses))
axs[1].set_title("log(loss)")
plt.show()

# %% [markdown]
# The loss we wrote out above is what `jaxdiff.losses.make_diffusion_loss` packages for `train.py`, with
# options for the prediction target (`epsilon`, `sample`, `v_prediction`) and min-SNR loss weighting
# (it draws its timesteps and noise from the key it is given, in its own order):

# %%
loss_fn = jax.jit(functools.partial(make_diffusion_loss(noise_schedule, prediction_type="epsilon"), apply_fn))
library_loss, aux = loss_fn(params, clean_images, jax.random.key(7))
print(f"make_diffusion_loss: {float(library_loss):.4f}, aux: {sorted(aux)}")

# %% [markdown]
# ## Step 6: Generate images
#
# ### Option 1: Creating a pipeline
#
# **Course cell:** `image_pipe = DDPMPipeline(unet=model, scheduler=noise_scheduler); image_pipe()`.
# **JAX:** `samplers.from_diffusers_config` reads a diffusers scheduler config (the dict in
# `scheduler_config.json`) and gives a `Sampler` pytree; our `generate` function above is the pipeline.
# The whole reverse process, 1,000 model calls in the course's DDPM, is one compiled `lax.scan`.

# %%
scheduler_config = {
    "_class_name": "DDPMScheduler",
    "num_train_timesteps": 1000,
    "beta_schedule": "squaredcos_cap_v2",
}
num_inference_steps = 50 if FAST else 1000
ddpm = samplers.from_diffusers_config(scheduler_config, num_inference_steps)
sample_shape = (8, image_size, image_size, channels)
pipeline_output = generate(apply_fn, params, ddpm, jax.random.key(1), sample_shape)
show_images(pipeline_output, nrow=8)

# %% [markdown]
# We can save the model and its scheduler as a diffusers pipeline folder:
#
# **Course cell:** `image_pipe.save_pretrained("my_pipeline")`. **JAX:** `save_pipeline` writes the same
# layout (`model_index.json`, `unet/config.json` with safetensors weights converted to PyTorch's layout,
# `scheduler/scheduler_config.json`), which `DDPMPipeline.from_pretrained` loads.

# %%
save_pipeline("my_pipeline", params, model_config, scheduler_config)
for folder in ("my_pipeline", "my_pipeline/unet", "my_pipeline/scheduler"):
    print(f"{folder}/:", sorted(os.listdir(folder)))

# %% [markdown]
# ### Option 2: Writing a sampling loop
#
# Inside the pipeline: start from random noise and go through the scheduler's timesteps from most to least
# noisy, removing a little noise at each step based on the model's prediction.
#
# **Course cell:** `for i, t in enumerate(noise_scheduler.timesteps): ... noise_scheduler.step(residual, t,
# sample).prev_sample`. **JAX:** we write the DDPM step (Ho et al. 2020, eqs. 6-7 and 15) out in full, one
# `jax.jit`-compiled function, and drive it from a plain Python loop. It uses the sampler's timesteps, and its
# per-step noise from the same key as `generate` (`samplers.step_noise`), so it reproduces Option 1.

# %%
alphas_cumprod = np.asarray(noise_schedule.alphas_cumprod)


@jax.jit
def ddpm_step(x, noise_pred, alpha_bar_t, alpha_bar_prev, noise):
    """x_t -> x_{t-1}: predict x0, clip it to [-1, 1], sample from the posterior q(x_{t-1} | x_t, x0)."""
    alpha_t = alpha_bar_t / alpha_bar_prev
    beta_t = 1 - alpha_t
    pred_x0 = (x - (1 - alpha_bar_t) ** 0.5 * noise_pred) / alpha_bar_t**0.5
    pred_x0 = jnp.clip(pred_x0, -1, 1)  # DDPMScheduler's clip_sample=True
    mean = (alpha_bar_prev**0.5 * beta_t / (1 - alpha_bar_t)) * pred_x0 + (
        alpha_t**0.5 * (1 - alpha_bar_prev) / (1 - alpha_bar_t)
    ) * x
    variance = jnp.maximum((1 - alpha_bar_prev) / (1 - alpha_bar_t) * beta_t, 1e-20)
    return mean + variance**0.5 * noise


noise_key, sample_key = jax.random.split(jax.random.key(1))  # as in generate()
sample = jax.random.normal(noise_key, sample_shape)  # random starting point (8 random images)
sampler_timesteps = np.asarray(ddpm.timesteps)
for i, t in enumerate(sampler_timesteps):
    residual = model_fn(params, sample, jnp.full((sample.shape[0],), t))
    prev_t = sampler_timesteps[i + 1] if i + 1 < len(sampler_timesteps) else -1
    alpha_bar_prev = alphas_cumprod[prev_t] if prev_t >= 0 else 1.0
    noise = samplers.step_noise(sample_key, i, sample.shape) if t > 0 else jnp.zeros(sample.shape)
    sample = ddpm_step(sample, residual, alphas_cumprod[t], alpha_bar_prev, noise)

print("largest difference from the pipeline's images:", float(jnp.max(jnp.abs(sample - pipeline_output))))
show_images(sample, nrow=8)

# %% [markdown]
# ### The denoising process
#
# `sample(..., intermediates_every=k)` also records, every `k` steps, the noisy input $x_t$ and the model's
# current guess of the clean image, $\hat{x}_0$. Left to right: from pure noise to the final image.

# %%
every = max(1, num_inference_steps // 10)
_, intermediates = generate(apply_fn, params, ddpm, jax.random.key(1), (4, *sample_shape[1:]), every)
fig, axs = plt.subplots(2, 1, figsize=(12, 9))
steps = ", ".join(str(int(t)) for t in intermediates["timesteps"])
show_uint8(axs[0], grids.make_process_strip(intermediates["x_t"]), title=f"$x_t$ at t = {steps}")
show_uint8(axs[1], grids.make_process_strip(intermediates["pred_x0"]), title=r"predicted $x_0$")
plt.show()

# %% [markdown]
# ### DDPM vs DDIM at several step counts
#
# The course promises other samplers in unit 2; they are all here already. DDIM (Song et al. 2021) is
# deterministic and gets good images in far fewer steps than DDPM. Every sampler reads the same diffusers
# config; only `_class_name` changes. Same starting noise in every panel:

# %%
step_counts = [5, 20] if FAST else [10, 50, 1000]
fig, axs = plt.subplots(2, len(step_counts), figsize=(4 * len(step_counts), 5))
for row, class_name in enumerate(["DDPMScheduler", "DDIMScheduler"]):
    for col, n in enumerate(step_counts):
        sampler = samplers.from_diffusers_config({**scheduler_config, "_class_name": class_name}, n)
        start = time.time()
        out = generate(apply_fn, params, sampler, jax.random.key(2), sample_shape)
        out.block_until_ready()
        seconds = time.time() - start
        show_grid(axs[row, col], out, nrow=4, title=f"{class_name[:4]}, {n} steps ({seconds:.1f}s)")
plt.show()

# %% [markdown]
# The times include compiling each new step count once. DPM-Solver++ (`DPMSolverMultistepScheduler`) and Euler
# (`EulerDiscreteScheduler`) work the same way.

# %% [markdown]
# ## Step 7: Push your model to the Hub
#
# The course uploads the pipeline folder with `huggingface_hub`. The folder written by `save_pipeline` is an
# ordinary diffusers pipeline, so the same calls upload it (we do not run them here):
#
# ```python
# from huggingface_hub import HfApi, create_repo
#
# create_repo("your-name/jaxdiff-digits-16")
# HfApi().upload_folder(folder_path="my_pipeline", repo_id="your-name/jaxdiff-digits-16")
# ```
#
# Anyone can then load it, in JAX with `jaxdiff.interop.load_pipeline(snapshot_download(repo_id))`, or in
# PyTorch with `DDPMPipeline.from_pretrained(repo_id)`. Both work on the local folder too:

# %%
loaded_apply_fn, loaded_params, loaded_unet_config, loaded_scheduler_config = load_pipeline("my_pipeline")
differences = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), params, loaded_params)
print("reloaded weights, largest difference:", max(jax.tree.leaves(differences)))
print("scheduler config:", loaded_scheduler_config)

# %% [markdown]
# And in PyTorch, if `diffusers` and `torch` are installed (the cell says so and moves on when they are
# not). The UNet's output on the same input matches ours up to float32 rounding; the pipeline's images differ
# from ours only because PyTorch draws different random noise.

# %%
try:
    import torch
    from diffusers import DDPMPipeline
except ImportError:
    print("diffusers / torch are not installed: skipping the PyTorch check (pip install diffusers torch).")
else:
    image_pipe = DDPMPipeline.from_pretrained("my_pipeline")
    image_pipe.set_progress_bar_config(disable=True)
    x_nchw = torch.from_numpy(np.array(noisy_xb)).permute(0, 3, 1, 2)  # NHWC -> NCHW
    with torch.no_grad():
        torch_pred = image_pipe.unet(x_nchw, torch.from_numpy(np.array(timesteps))).sample
    jax_pred = np.asarray(model_fn(params, noisy_xb, timesteps))
    difference = np.abs(torch_pred.permute(0, 2, 3, 1).numpy() - jax_pred).max()
    print("UNet, PyTorch vs JAX, largest difference:", difference)
    generator = torch.manual_seed(0)
    torch_steps = 10 if FAST else num_inference_steps
    torch_images = image_pipe(
        batch_size=8, num_inference_steps=torch_steps, generator=generator, output_type="np"
    ).images  # NHWC in [0, 1]
    show_images(torch_images * 2 - 1, nrow=8, title="sampled by diffusers' DDPMPipeline")

# %% [markdown]
# # Scaling up with `train.py`
#
# The course continues with diffusers' `train_unconditional.py` script and 🤗 Accelerate. jaxdiff's twin is
# `train.py`: the same training step, plus an EMA of the weights, learning-rate warm-up and decay, checkpoints
# that resume exactly (data order included), periodic sample grids, and data parallelism over every device
# of a machine or a pod (a `jax.sharding.Mesh`, no launcher needed). Configs are `ml_collections` files:
#
# ```bash
# python train.py --config configs/digits_ddpm.py --workdir workdirs/digits_ddpm   # this notebook's setup
# python train.py --config configs/butterflies.py             # the course's run: 32x32 butterflies
# python train.py --config configs/digits_ddpm.py --config.train.num_steps=3000 --workdir workdirs/longer
# python sample.py --workdir workdirs/digits_ddpm --sampler ddim --steps 50 --process_strip strip.png
# python train.py --config configs/digits.py                  # the first run: better digits (EDM, labels)
# ```
#
# At the end `train.py` exports the EMA model with `save_pipeline` to `workdirs/<name>/diffusers/`.
# **Exercise** (as in the course): find settings that give good digits in as little time as possible.

# %% [markdown]
# # Avenues for further exploration
#
# - Train on another dataset: `--config.data.source=folder:/path/to/images` or `hf:<dataset on the Hub>`.
# - Change the UNet (`block_out_channels`, `layers_per_block`, attention blocks) or the noise schedule.
# - Try `prediction_type="v_prediction"` and `loss_weighting="min_snr"` (see `jaxdiff.losses`).
# - Read `02_diffusion_models_from_scratch`, the twin of the course's "Diffusion Models from Scratch".
