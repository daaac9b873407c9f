"""jaxdiff: diffusion models (DDPM, DDIM, DPM-Solver++, Euler) in JAX/Flax, with diffusers parity."""

from setuptools import find_packages, setup

setup(
    name="jaxdiff",
    version="0.1.0",
    description="Diffusion models in JAX/Flax NNX and diffusers parity: schedules, samplers, UNets.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["jaxdiff", "jaxdiff.*"]),
    install_requires=[
        "jax>=0.7",
        "flax>=0.12",
        "optax>=0.2.5",
        "orbax-checkpoint>=0.11",
        "grain>=0.2.12",
        "tensorflow-datasets>=4.9.9",
        "array_record>=0.8",
        "numpy>=1.26",
        "pillow>=10",
        "absl-py>=2",
        "ml_collections>=1.0",
        "safetensors>=0.4",
        "tqdm>=4.66",
        "scikit-learn>=1.4",
        "scipy>=1.11",  # jaxdiff.evaluation: the Fréchet distance's matrix square root
        "tensorboardX>=2.6",
        # jaxdiff.execution.allocator: the CLIs run under mimalloc (XLA re-allocates its CPU arena per step).
        "cmeel-mimalloc>=3.2; sys_platform == 'linux' and platform_machine == 'x86_64'",
    ],
    extras_require={
        # The peers the test-suite checks against run on the CPU: torch's CPU wheel.
        # torch-fidelity (the FID/KID peer) is installed with `pip install --no-deps torch-fidelity==0.4.0`:
        # its declared torchvision dependency does not import beside the CPU torch and breaks diffusers'
        # imports; the tests load only its torchvision-free modules (tests/_evaluation_peer.py).
        "test": [
            "pytest>=8",
            "pytest-xdist>=3.5",
            "torch==2.13.0",
            "diffusers==0.42.1",
            "ruff>=0.6",
            "nbclient>=0.10",
            "ipykernel>=6",
            "jupytext>=1.16",
            "matplotlib>=3.8",
            "wandb>=0.17",  # tested offline (WANDB_MODE=offline)
        ],
        "hf": ["datasets>=2.19"],
        # train.wandb_project: the run's scalars and sample grids in Weights & Biases.
        "wandb": ["wandb>=0.17"],
        "notebooks": ["matplotlib>=3.8", "jupytext>=1.16", "nbclient>=0.10", "ipykernel>=6"],
    },
)
