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
# # Diffusion Models from Scratch
#
# This notebook follows **"Diffusion Models from Scratch"**, the second hands-on chapter of unit 1 of the
# [Hugging Face Diffusion Models Class](https://github.com/huggingface/diffusion-models-class), section by
# section, in JAX with [jaxdiff](../README.md). Keep the course open next to it: every heading here is a
# heading there (`notebooks/README.md` has the full map).
#
# We begin with a toy diffusion model to see how the pieces work:
#
# - the **corruption process** (mixing data with noise by an `amount`),
# - a minimal **UNet** (the course's `BasicUNet`),
# - **training** it to predict the clean image,
# - a simple iterative **sampler**.
#
# Then we compare it with DDPM as diffusers (and jaxdiff) implement it: a bigger UNet, the noise schedule,
# the training objective (epsilon, sample or v), timestep conditioning, and other samplers.
#
# The toy pieces are part of the library, not only of this notebook: `jaxdiff.corruption` holds `corrupt`,
# the training loss and the sampler, `create_model({"_class_name": "BasicUNet"})` the network, and
# `python train.py --config configs/from_scratch.py` trains it like any other model.
#
# ### How the JAX version differs from the course, and why
#
# - **Explicit random keys.** `torch.rand_like(x)` draws from a hidden global generator; in JAX you pass a
#   PRNG key and split it to get fresh randomness. So our `corrupt(x, amount, noise)` takes the noise as an
#   argument instead of drawing it inside: the same inputs always give the same output.
# - **Pure functions.** A model is `apply_fn(params, x, t)` plus a `params` pytree; a training step takes
#   parameters and optimizer state and returns new ones instead of updating modules in place.
# - **`jax.jit`** compiles a pure function once (the first call is slow), then it runs fast. A sampling loop
#   is one compiled `lax.scan`.
# - **NHWC.** Images are `[batch, height, width, channels]`; PyTorch's are `[batch, channels, height, width]`.
#
# It runs offline on a CPU in a few minutes.

# %% [markdown]
# ## Setup and imports
#
# The course installs `diffusers`; here everything comes from jaxdiff (`pip install -e ".[notebooks]"` in a
# checkout).

# %%
import functools
import os
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from flax import nnx

from jaxdiff import grids, samplers
from jaxdiff.corruption import corrupt, from_scratch_noise, from_scratch_sample, make_from_scratch_loss
from jaxdiff.data import make_train_iterator
from jaxdiff.losses import loss_weights, make_diffusion_loss, training_target
from jaxdiff.models import create_model, functional, param_count
from jaxdiff.models.embeddings import sinusoidal_embedding
from jaxdiff.schedules import add_noise, make_schedule, snr

# FAST: tiny settings so that a test can run the whole notebook in a minute or two. Leave it unset.
FAST = os.environ.get("JAXDIFF_NOTEBOOK_FAST", "0") == "1"
print(f"JAX {jax.__version__}, devices {jax.devices()}, FAST={FAST}")


def show(ax, x, nrow=8, title=None, value_range=(0.0, 1.0)):
    """Draw NHWC images as one grid in the course's 'Greys' colormap (dark strokes on white)."""
    lo, hi = value_range
    x = (np.asarray(x, np.float32) - lo) / (hi - lo) * 2 - 1  # jaxdiff.grids takes [-1, 1] (and clips)
    ax.imshow(grids.make_grid(x, nrow=nrow)[..., 0], cmap="Greys", vmin=0, vmax=255)
    ax.set_axis_off()
    if title:
        ax.set_title(title)


# %% [markdown]
# ## The data
#
# The course uses MNIST: 28x28 grayscale digits with values in [0, 1]. To stay offline we use the digits that
# ship with scikit-learn (1,797 of them, 8x8), upsampled to 28x28 by `jaxdiff.data`. Its batches are in
# [-1, 1]; we map them to [0, 1] to match the course.
#
# **Course cell:** `DataLoader(dataset, batch_size=8, shuffle=True)`. **JAX:** `make_train_iterator` yields
# shuffled NHWC batches forever, in an order fixed by `seed`.

# %%
image_size = 28
data_config = {"source": "digits:all", "image_size": image_size, "channels": 1}  # all 1,797
num_images = 1797


def batches(batch_size, seed=0):
    """Endless (images, labels): NHWC float32 images in [0, 1] (like ToTensor()) and int labels."""
    for batch in make_train_iterator(data_config, global_batch_size=batch_size, seed=seed):
        yield (batch["image"] + 1) / 2, batch["label"]


x, y = next(batches(8))
print("Input shape:", x.shape)
print("Labels:", y)
fig, ax = plt.subplots(figsize=(10, 1.6))
show(ax, x)
plt.show()

# %% [markdown]
# ## The corruption process
#
# Pretend you haven't read any diffusion model papers, but you know the process involves adding noise. An easy
# way to control the amount of corruption: draw uniform noise and mix it in by `amount`,
#
# `noisy_x = (1 - amount) * x + amount * noise`
#
# With `amount = 0` we get the input back; with `amount = 1`, pure noise. The output stays in [0, 1].
#
# **Course cell:** `def corrupt(x, amount)` draws `noise = torch.rand_like(x)` inside and reshapes `amount`
# with `amount.view(-1, 1, 1, 1)`. **JAX:** `jaxdiff.corruption.corrupt(x, amount, noise)` is the same formula
# with the noise passed in, so it stays a pure function; `from_scratch_noise(key, shape)` is
# `torch.rand_like`'s twin. `amount` (one value per image) is broadcast over NHWC the same way.

# %%
key = jax.random.key(0)
fig, axs = plt.subplots(2, 1, figsize=(12, 5))
show(axs[0], x, title="Input data")

amount = jnp.linspace(0, 1, x.shape[0])  # left to right -> more corruption
key, noise_key = jax.random.split(key)
noised_x = corrupt(x, amount, from_scratch_noise(noise_key, x.shape))
show(axs[1], noised_x, title="Corrupted data (-- amount increases -->)")
plt.show()

# %% [markdown]
# As the amount approaches one the data looks like pure noise, but for most amounts you can still guess the
# digit. Do you think this is optimal?

# %% [markdown]
# ## The model
#
# A UNet takes a noisy image and outputs a prediction of the same shape. The course's minimal one has three
# convolutions on the way down and three on the way up (5x5 kernels, SiLU activations), max pooling to
# downsample and nearest-neighbour upsampling, and skip connections that add the first two down activations
# back on the way up. Channels: 1 -> 32 -> 64 -> 64 on the way down, 64 -> 32 -> 1 on the way up.
#
# **Course cell:** `class BasicUNet(nn.Module)`. **JAX:** the same network is
# `jaxdiff.models.BasicUNet`, a Flax NNX module with the course's layer names; `create_model` builds it from a
# config and `functional` turns it into a pure `apply_fn(params, x, t)` (it ignores `t`: this UNet is not told
# the noise level).

# %%
net = create_model({"_class_name": "BasicUNet", "in_channels": 1, "out_channels": 1}, rngs=nnx.Rngs(0))
apply_fn, params = functional(net)
for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    print(jax.tree_util.keystr(path), leaf.shape)

# %% [markdown]
# The output has the input's shape (`x = torch.rand(8, 1, 28, 28)` in the course; NHWC here):

# %%
model_fn = jax.jit(apply_fn)  # compiled once per input shape
print(model_fn(params, jax.random.uniform(jax.random.key(1), (8, 28, 28, 1)), 0).shape)

# %% [markdown]
# This network has just over 300,000 parameters, as in the course:

# %%
param_count(params)

# %% [markdown]
# ## Training the network
#
# Given a corrupted input `noisy_x`, the model should output its best guess of the original `x`; we compare
# the two with the mean squared error. For each batch: corrupt it by random amounts, feed it through the
# model, compare the predictions with the clean images, update the parameters. Adam at a learning rate of
# 1e-3 with batches of 128, as in the course.
#
# **Course cell:** the training loop with `noise_amount = torch.rand(x.shape[0])`, `loss.backward()` and
# `opt.step()`. **JAX:** the loss is a function of the parameters and a `key` (the amounts and the noise come
# from it); `jax.value_and_grad` gives the gradients and `optax.adam` the update, all inside one `jax.jit`
# step that returns new parameters.

# %%
batch_size = 16 if FAST else 128
n_epochs = 2 if FAST else 20  # the course's 3 epochs of MNIST are ~1,400 steps; 20 of the digits are ~280
steps_per_epoch = 2 if FAST else num_images // batch_size

optimizer = optax.adam(learning_rate=1e-3)
opt_state = optimizer.init(params)


def loss_fn(params, x, key):
    amount_key, noise_key = jax.random.split(key)
    noise_amount = jax.random.uniform(amount_key, (x.shape[0],))  # pick random noise amounts
    noisy_x = corrupt(x, noise_amount, from_scratch_noise(noise_key, x.shape))  # create our noisy x
    pred = apply_fn(params, noisy_x, 0)  # get the model prediction
    return jnp.mean((pred - x) ** 2)  # how close is the output to the true 'clean' x?


@jax.jit
def train_step(params, opt_state, x, key):
    loss, grads = jax.value_and_grad(loss_fn)(params, x, key)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss


train_data = batches(batch_size)
key = jax.random.key(42)
losses = []
start = time.time()
for epoch in range(n_epochs):
    for _ in range(steps_per_epoch):
        x, y = next(train_data)
        key, step_key = jax.random.split(key)
        params, opt_state, loss = train_step(params, opt_state, x, step_key)
        losses.append(loss)
    avg_loss = np.mean([float(v) for v in losses[-steps_per_epoch:]])
    print(f"Finished epoch {epoch}. Average loss for this epoch: {avg_loss:05f} ({time.time() - start:.0f}s)")

losses = np.array([float(v) for v in losses])
plt.plot(losses)
plt.ylim(0, 0.1)
plt.show()

# %% [markdown]
# `jaxdiff.corruption.make_from_scratch_loss()` is this loss with the library's standard signature
# `loss_fn(apply_fn, params, x0, key)`, the one `train.py` uses with `configs/from_scratch.py`:
#
# ```bash
# python train.py --config configs/from_scratch.py   # BasicUNet, this objective, batch 128, Adam 1e-3
# ```

# %%
library_loss, aux = make_from_scratch_loss()(apply_fn, params, x, jax.random.key(3))
print(f"make_from_scratch_loss on the last batch: {float(library_loss):.4f}")

# %% [markdown]
# What do the predictions look like? Take a batch, corrupt it by increasing amounts and compare:

# %%
x, _ = next(batches(8, seed=1))
amount = jnp.linspace(0, 1, x.shape[0])  # left to right -> more corruption
noised_x = corrupt(x, amount, from_scratch_noise(jax.random.key(4), x.shape))
preds = model_fn(params, noised_x, 0)

fig, axs = plt.subplots(3, 1, figsize=(12, 7))
show(axs[0], x, title="Input data")
show(axs[1], noised_x, title="Corrupted data")
show(axs[2], preds, title="Network Predictions")
plt.show()

# %% [markdown]
# For low amounts the predictions are good. At high amounts there is little left to work with, and at
# `amount = 1` the model outputs a blurry guess close to the mean of the dataset.

# %% [markdown]
# ## Sampling
#
# If predictions at high noise levels are poor, how do we generate images? Start from random noise, look at
# the model's prediction, but move only part of the way towards it. The result is a little less noisy, so the
# next prediction should be a little better; repeat. Here over 5 steps: the model input (left) and its
# prediction (right) at each step.
#
# **Course cell:** the `for i in range(n_steps)` loop with `mix_factor = 1 / (n_steps - i)` and
# `x = x * (1 - mix_factor) + pred * mix_factor`, storing `step_history` and `pred_output_history`. **JAX:**
# `jaxdiff.corruption.from_scratch_sample` is that loop as one `lax.scan`; with `return_intermediates=True` it
# also returns every step's input and prediction, stacked.

# %%
n_steps = 5
x = from_scratch_noise(jax.random.key(5), (8, 28, 28, 1))  # start from random
x, history = from_scratch_sample(apply_fn, params, x, n_steps, return_intermediates=True)

fig, axs = plt.subplots(n_steps, 2, figsize=(9, 4), sharex=True)
axs[0, 0].set_title("x (model input)")
axs[0, 1].set_title("model prediction")
for i in range(n_steps):
    show(axs[i, 0], history["x"][i])
    show(axs[i, 1], history["pred"][i])
plt.show()

# %% [markdown]
# More steps give better images. 64 samples with 40 steps:

# %%
x = from_scratch_sample(apply_fn, params, from_scratch_noise(jax.random.key(6), (64, 28, 28, 1)), 40)
fig, ax = plt.subplots(figsize=(8, 8))
show(ax, x, nrow=8)
plt.show()

# %% [markdown]
# Not great, but some digits are recognisable. Try training longer, a different learning rate or more
# channels.

# %% [markdown]
# ## Comparison to DDPM
#
# How does our toy differ from DDPM, the approach of the other notebook (`01_introduction_to_jaxdiff`)?
#
# - diffusers' `UNet2DModel` (jaxdiff's `UNet2D`) is more advanced than our BasicUNet,
# - the corruption process is different,
# - the model predicts the noise rather than the denoised image,
# - the model is told the noise level through a timestep argument,
# - and there are many samplers, which work better than our simple loop.

# %% [markdown]
# ### The UNet
#
# `UNet2DModel` adds group normalisation, dropout, several ResNet layers per block, attention (usually at
# low resolutions only), timestep conditioning and learned down/upsampling. The course's configuration,
# "roughly matching our basic unet":
#
# **Course cell:** `print(model)` and a parameter count. **JAX:** `nnx.eval_shape` builds the model with
# shapes only (no memory, no random init), enough to count its parameters.

# %%
course_unet = dict(
    sample_size=28,
    in_channels=1,
    out_channels=1,
    layers_per_block=2,
    block_out_channels=(32, 64, 64),  # roughly matching our basic unet example
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
)
abstract_unet = nnx.eval_shape(lambda: create_model(course_unet, rngs=nnx.Rngs(0)))
print(f"{param_count(abstract_unet):,} parameters vs the {param_count(params):,} of the BasicUNet")

# %% [markdown]
# The course then retrains with this model in place of the BasicUNet, same objective, passing timestep 0
# (so it gets no information about the noise level). That model is slow to train on a CPU, so we train a
# lighter variant (half the channels, one ResNet layer per block, attention only at 7x7) for a short while on
# batches of 64; with an accelerator, use `course_unet` and the course's settings.
#
# **Course cell:** the training cell marked `#<<<` where it changes (`net = UNet2DModel(...)` and
# `net(noisy_x, 0).sample`). **JAX:** the same loss, with `apply_fn(params, noisy_x, 0)` of the new model.

# %%
cpu_unet = dict(
    course_unet,
    layers_per_block=1,
    block_out_channels=(16, 32, 32),
    norm_num_groups=8,
    down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
)
if FAST:  # a tiny UNet, for the notebook test only
    cpu_unet = dict(
        cpu_unet,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    )
unet_batch_size = 16 if FAST else 64
unet_steps = 3 if FAST else 150


def train(apply_fn, params, loss_fn, data, num_steps, learning_rate=1e-3, seed=0):
    """Adam on `loss_fn(params, x, key)` for `num_steps` batches of `data`; returns (params, losses)."""
    optimizer = optax.adam(learning_rate)

    @jax.jit
    def train_step(params, opt_state, x, key):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, key)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    opt_state = optimizer.init(params)
    key = jax.random.key(seed)
    losses = []
    start = time.time()
    for step in range(num_steps):
        key, step_key = jax.random.split(key)
        params, opt_state, loss = train_step(params, opt_state, next(data)[0], step_key)
        losses.append(loss)
        if (step + 1) % 50 == 0 or step + 1 == num_steps:
            recent = np.mean([float(v) for v in losses[-50:]])
            print(f"step {step + 1}: loss {recent:.4f} ({time.time() - start:.0f}s)")
    return params, np.array([float(v) for v in losses])


unet_apply_fn, unet_init_params = functional(create_model(cpu_unet, rngs=nnx.Rngs(0)))
print(f"{param_count(unet_init_params):,} parameters")


def unet_loss_fn(params, x, key):
    amount_key, noise_key = jax.random.split(key)
    noise_amount = jax.random.uniform(amount_key, (x.shape[0],))
    noisy_x = corrupt(x, noise_amount, from_scratch_noise(noise_key, x.shape))
    pred = unet_apply_fn(params, noisy_x, 0)  # <<< using timestep 0 always
    return jnp.mean((pred - x) ** 2)


unet_params, unet_losses = train(
    unet_apply_fn, unet_init_params, unet_loss_fn, batches(unet_batch_size), unet_steps
)

fig, axs = plt.subplots(1, 2, figsize=(12, 5))
axs[0].plot(unet_losses)
axs[0].set_ylim(0, 0.1)
axs[0].set_title("Loss over time")
x = from_scratch_sample(
    unet_apply_fn, unet_params, from_scratch_noise(jax.random.key(6), (64, 28, 28, 1)), 40
)
show(axs[1], x, nrow=8, title="Generated Samples")
plt.show()

# %% [markdown]
# ### The corruption process
#
# DDPM adds a little Gaussian noise at every timestep: $q(x_t \mid x_{t-1}) = \mathcal{N}(x_t;
# \sqrt{1 - \beta_t}\, x_{t-1}, \beta_t I)$, or in one go from $x_0$:
# $q(x_t \mid x_0) = \mathcal{N}(x_t; \sqrt{\bar\alpha_t}\, x_0, (1 - \bar\alpha_t) I)$ with
# $\bar\alpha_t = \prod_{s \le t} (1 - \beta_s)$. Plotting $\sqrt{\bar\alpha_t}$ (how much of $x$ is left) and
# $\sqrt{1 - \bar\alpha_t}$ (how much noise):
#
# **Course cell:** `DDPMScheduler(num_train_timesteps=1000)` and `noise_scheduler.add_noise`. **JAX:**
# `make_schedule(1000)` and `add_noise(schedule, x0, noise, t)`, pure functions of arrays.

# %%
noise_schedule = make_schedule(num_train_timesteps=1000)
alphas_cumprod = np.asarray(noise_schedule.alphas_cumprod)
plt.plot(alphas_cumprod**0.5, label=r"$\sqrt{\bar{\alpha}_t}$")
plt.plot((1 - alphas_cumprod) ** 0.5, label=r"$\sqrt{1 - \bar{\alpha}_t}$")
plt.legend(fontsize="x-large")
plt.show()

# %% [markdown]
# At first the noisy x is mostly x, but the noise takes over much sooner than with our linear `amount`. On
# some data (mapped to (-1, 1) first, as DDPM expects):

# %%
xb, _ = next(batches(8))
xb = xb * 2.0 - 1.0  # map to (-1, 1)
print("X shape", xb.shape)
timesteps = jnp.linspace(0, 999, 8).astype(jnp.int32)
noise = jax.random.normal(jax.random.key(7), xb.shape)  # << NB: normal, not uniform
noisy_xb = add_noise(noise_schedule, xb, noise, timesteps)
print("Noisy X shape", noisy_xb.shape)

fig, axs = plt.subplots(3, 1, figsize=(16, 10))
show(axs[0], xb, title="Clean X", value_range=(-1, 1))
show(axs[1], noisy_xb, title="Noisy X (clipped to (-1, 1))", value_range=(-1, 1))
span = (float(noisy_xb.min()), float(noisy_xb.max()))
show(axs[2], noisy_xb, title="Noisy X", value_range=span)
plt.show()

# %% [markdown]
# Another difference: DDPM's noise is Gaussian (mean 0, standard deviation 1: `jax.random.normal`, like
# `torch.randn`), not uniform in [0, 1) (`jax.random.uniform`, like `torch.rand`). And the data is normalised
# to (-1, 1), as `jaxdiff.data` does for every training batch.

# %% [markdown]
# ### Training objective
#
# Our toy model predicts the denoised image. DDPM's model predicts the noise that was added (`epsilon`):
#
# ```python
# noise = jax.random.normal(key, x0.shape)  # NB: normal, not uniform
# noisy_x = add_noise(noise_schedule, x0, noise, timesteps)
# model_prediction = apply_fn(params, noisy_x, timesteps)
# loss = jnp.mean((model_prediction - noise) ** 2)  # noise as the target
# ```
#
# diffusers (and `jaxdiff.losses`) offer three targets: `"epsilon"` (the noise), `"sample"` (the clean image,
# like our toy) and `"v_prediction"` ($v = \sqrt{\bar\alpha_t}\,\epsilon - \sqrt{1-\bar\alpha_t}\,x_0$,
# Salimans & Ho 2022). `training_target` computes each; for the same digits at increasing timesteps:

# %%
t = jnp.array([50, 250, 500, 750, 950])
x0, eps = xb[:5], noise[:5]
x_t = add_noise(noise_schedule, x0, eps, t)
rows = {"noisy input $x_t$": x_t}
for prediction_type in ("epsilon", "sample", "v_prediction"):
    rows[f"target: {prediction_type}"] = training_target(noise_schedule, x0, eps, t, prediction_type)
fig, axs = plt.subplots(len(rows), 1, figsize=(8, 9))
for ax, (title, row) in zip(axs, rows.items(), strict=True):
    show(ax, row, nrow=5, title=f"{title}, t = {t.tolist()}", value_range=(-2.5, 2.5))
plt.show()

# %% [markdown]
# Predicting the noise and predicting the image look equivalent (one gives the other), but the loss weights
# the noise levels differently. From $x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon$,
# a squared error in $\epsilon$ is $\mathrm{SNR}(t) = \bar\alpha_t / (1 - \bar\alpha_t)$ times the squared
# error in $x_0$, and one in $v$ is $\mathrm{SNR}(t) + 1$ times. So the epsilon loss puts far more weight on
# the low noise levels than the `sample` loss. Min-SNR-gamma weighting (Hang et al. 2023;
# `loss_weighting="min_snr"` in `make_diffusion_loss` and in `train.py`'s config) caps it at $\gamma$:

# %%
t_all = jnp.arange(1000)
snr_t = np.asarray(snr(noise_schedule, t_all))
min_snr = np.asarray(loss_weights(noise_schedule, t_all, "epsilon", "min_snr", snr_gamma=5.0)) * snr_t
plt.figure(figsize=(8, 4))
plt.semilogy(snr_t, label="epsilon: SNR(t)")
plt.semilogy(snr_t + 1, "--", label="v_prediction: SNR(t) + 1")
plt.semilogy(np.ones_like(snr_t), label="sample: 1")
plt.semilogy(min_snr, ":", linewidth=3, label=r"epsilon + min_snr ($\gamma$ = 5): min(SNR, 5)")
plt.xlabel("timestep t")
plt.ylabel("weight on the squared error in $x_0$")
plt.legend()
plt.show()

# %% [markdown]
# Which objective is best is still researched. Predicting the noise is the most common choice, and the
# default everywhere here.

# %% [markdown]
# ### Timestep conditioning
#
# `UNet2DModel` takes both `x` and the timestep. The timestep is turned into an embedding, sines and cosines
# of it at many frequencies (below), passed through a small MLP and added inside every ResNet block. Telling
# the model the noise level helps it, and most implementations do it.

# %%
embedding = sinusoidal_embedding(t_all, 64, flip_sin_to_cos=True, freq_shift=0)
plt.figure(figsize=(8, 3))
plt.imshow(np.asarray(embedding).T, aspect="auto", cmap="RdBu")
plt.xlabel("timestep t")
plt.ylabel("embedding dimension")
plt.colorbar()
plt.show()

# %% [markdown]
# Let's train the same small UNet (from the same initial weights) the DDPM way: Gaussian noise, random
# timesteps given to the model, the noise as the target, with `jaxdiff.losses.make_diffusion_loss`, the loss
# `train.py` uses (data in (-1, 1)). Twice as many steps as before, still brief: expect digit-like shapes;
# `train.py --config configs/digits.py` trains a good model in about ten minutes.
#
# **JAX:** `make_diffusion_loss(schedule)` returns `loss_fn(apply_fn, params, x0, key)`; it draws the
# timesteps, the noise and a dropout key from `key`.

# %%
ddpm_loss = make_diffusion_loss(noise_schedule, prediction_type="epsilon")
ddpm_data = ((x * 2 - 1, y) for x, y in batches(unet_batch_size))  # (-1, 1)
ddpm_params, ddpm_losses = train(
    unet_apply_fn,
    unet_init_params,
    lambda params, x, key: ddpm_loss(unet_apply_fn, params, x, key)[0],
    ddpm_data,
    2 * unet_steps,
)
plt.plot(ddpm_losses)
plt.title("DDPM loss (epsilon target)")
plt.show()

# %% [markdown]
# ### Sampling
#
# Our simple loop moves towards the model's prediction by a fixed fraction. Samplers derived from the
# diffusion process do better, and there are many: how big a step to take, whether to use only the current
# prediction (DDPM, DDIM) or several (higher-order solvers like DPM-Solver++), whether to add fresh noise at
# each step (DDPM, DDIM with `eta > 0`) or stay deterministic.
#
# jaxdiff implements diffusers' DDPM, DDIM, DPM-Solver++ and Euler schedulers, each as a short pure update
# rule run by one `lax.scan`; `from_diffusers_config` takes the scheduler config a diffusers pipeline stores.
# Same model, same starting noise:

# %%
sampler_steps = 5 if FAST else 25


@functools.partial(jax.jit, static_argnames=("shape",))
def generate(params, sampler, key, shape):
    noise_key, sample_key = jax.random.split(key)
    model_fn = lambda x, t: unet_apply_fn(params, x, t)
    return samplers.sample(sampler, model_fn, jax.random.normal(noise_key, shape), sample_key)


configs = {
    "DDPM": {"_class_name": "DDPMScheduler"},
    "DDIM": {"_class_name": "DDIMScheduler"},
    "DPM-Solver++": {"_class_name": "DPMSolverMultistepScheduler"},
    "Euler": {"_class_name": "EulerDiscreteScheduler"},
    "DPM-Solver++, thresholding": {"_class_name": "DPMSolverMultistepScheduler", "thresholding": True},
}
fig, axs = plt.subplots(1, len(configs), figsize=(4 * len(configs), 4.5))
for ax, (title, config) in zip(axs, configs.items(), strict=True):
    sampler = samplers.from_diffusers_config(config, sampler_steps)
    out = generate(ddpm_params, sampler, jax.random.key(8), (16, 28, 28, 1))
    show(ax, out, nrow=4, title=f"{title}, {sampler_steps} steps", value_range=(-1, 1))
plt.show()

# %% [markdown]
# Some DPM-Solver++ and Euler images may be pure noise. That is this briefly trained model, not the
# samplers (they match diffusers' to float32 precision on it): DDPM and DDIM clip their estimate of $x_0$ to
# [-1, 1] at every step (`clip_sample=True` by default in their diffusers configs), which hides the model's
# large errors at the highest noise levels; DPM-Solver++ and Euler do not clip by default, so those errors can
# push an image far outside [-1, 1]. DPM-Solver++ with `thresholding=True` (dynamic thresholding, here a clip
# to [-1, 1]) mostly recovers; a better-trained model (`train.py`) needs neither.

# %% [markdown]
# To dig into one: every sampler module in `jaxdiff/samplers/` (e.g. `ddim.py`) is a few dozen lines with the
# update rule written as in its paper, and the test-suite checks each against diffusers. The course points to
# [diffusers' schedulers](https://github.com/huggingface/diffusers/tree/main/src/diffusers/schedulers) and
# their [docs](https://huggingface.co/docs/diffusers/api/schedulers/overview) for the theory.

# %% [markdown]
# ## Conclusions
#
# We built a toy diffusion model from scratch and compared each of its pieces with DDPM: the UNet, the
# corruption process, the training objective, timestep conditioning and the samplers. The toy is in the
# library too (`jaxdiff.corruption`, `BasicUNet`, `configs/from_scratch.py`), and `train.py` trains either
# kind at scale. The course's notebook was written by Jonathan Whitaker; this JAX twin follows its structure.
