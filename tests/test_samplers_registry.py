"""The sampler registry: names, aliases, class names, and the scheduler configs a training config implies."""

import re

import pytest

from jaxdiff.errors import UserError
from jaxdiff.samplers import (
    SCHEDULER_CLASSES,
    SamplerEntry,
    from_diffusers_config,
    register_sampler,
    resolve_sampler,
    sampler_names,
    scheduler_config_for,
)
from jaxdiff.samplers.catalog import BY_CLASS_NAME


def test_every_class_has_an_entry_and_every_entry_a_module():
    entries = [resolve_sampler(name) for name in sampler_names()]
    assert sampler_names()[:5] == ("ddpm", "ddim", "dpm++", "dpm++sde", "euler")
    assert {entry.class_name for entry in entries} == set(SCHEDULER_CLASSES) == set(BY_CLASS_NAME)
    for entry in entries:
        assert resolve_sampler(entry.name) is entry
        for alias in entry.aliases:
            assert resolve_sampler(alias) is entry
        assert resolve_sampler(entry.class_name).class_name == entry.class_name
        assert entry.config_keys == set(BY_CLASS_NAME[entry.class_name].DEFAULTS) | set(
            BY_CLASS_NAME[entry.class_name].CALL_DEFAULTS
        )
        # The config of a bare name is one from_diffusers_config takes.
        sampler = from_diffusers_config(scheduler_config_for(entry.name), 6)
        assert sampler.num_steps >= 6


def test_aliases_resolve_to_the_canonical_entry():
    assert resolve_sampler("dpmsolver++").name == "dpm++"
    assert resolve_sampler("dpm-solver++").name == "dpm++"
    assert resolve_sampler("DDIMScheduler").name == "ddim"


def test_unknown_name_lists_canonical_names():
    with pytest.raises(
        UserError, match="sampler 'pndm' is not one of ddpm, ddim, dpm\\+\\+, dpm\\+\\+sde, euler, heun"
    ) as info:
        resolve_sampler("pndm")
    assert "aliases" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(UserError, match="sampler None is not one of"):
        resolve_sampler(None)


def test_duplicate_names_are_refused():
    for name in ("ddim", "dpmsolver++", "DDIMScheduler"):
        with pytest.raises(ValueError, match=re.escape(f"sampler name '{name}' is already registered")):
            register_sampler(SamplerEntry(name=name, class_name="DDIMScheduler"))
    with pytest.raises(ValueError, match="'twice' is already registered"):
        register_sampler(SamplerEntry(name="twice", class_name="X", aliases=("twice",)))
    assert "twice" not in sampler_names()


def test_train_keys_and_options():
    train = {
        "num_train_timesteps": 500,
        "beta_schedule": "linear",
        "trained_betas": None,
        "prediction_type": "v_prediction",
        "clip_sample": False,
        "timestep_spacing": "trailing",
        "variance_type": "fixed_large",
        "objective": "ddpm",
    }
    common = {"num_train_timesteps": 500, "beta_schedule": "linear", "prediction_type": "v_prediction"}
    assert scheduler_config_for("ddpm", train) == {
        "_class_name": "DDPMScheduler",
        **common,
        "clip_sample": False,
        "timestep_spacing": "trailing",
        "variance_type": "fixed_large",
    }
    assert scheduler_config_for("ddim", train, eta=0.5) == {
        "_class_name": "DDIMScheduler",
        **common,
        "clip_sample": False,
        "timestep_spacing": "trailing",
        "eta": 0.5,
    }
    # DPM-Solver++ and Euler keep their own spacing (as diffusers' pipelines use them).
    assert scheduler_config_for("dpm++", train) == {"_class_name": "DPMSolverMultistepScheduler", **common}
    assert scheduler_config_for("euler", train, timestep_spacing="leading") == {
        "_class_name": "EulerDiscreteScheduler",
        **common,
        "timestep_spacing": "leading",
    }
    entry = resolve_sampler("ddim")
    with pytest.raises(TypeError):
        entry.options["eta"] = 1.0  # entries are read-only
