"""train.compile: validated, refused early where torch.compile cannot work, and (slow) a compiled
run that trains as the eager one, resumes bitwise and writes checkpoints eager code loads."""

from __future__ import annotations

import os
import signal

import pytest

from genctl import checkpoint
from genctl.errors import BadInput
from genctl.recipe import apply_overrides, validate
from genctl.spec import DataInfo
from genctl.tracking import get_run, local_path
from genctl.trainer import train
from tests import toy
from tests.helpers import TOY_RECIPE


def _recipe(*overrides):
    return validate(apply_overrides(TOY_RECIPE, list(overrides)), spec=toy.SPEC)


def test_compile_takes_a_bool_or_a_torch_compile_mode():
    assert _recipe().train.compile is False
    assert _recipe("train.compile=true").train.compile is True
    assert _recipe("train.compile=max-autotune").train.compile == "max-autotune"
    with pytest.raises(BadInput) as err:
        _recipe("train.compile=fast")
    assert "train.compile: 'fast' is invalid" in err.value.message
    assert "reduce-overhead" in err.value.message


def test_compile_without_a_cxx_compiler_is_bad_input_before_the_run(workdir):
    """Inductor finds no compiler: the trainer says so before it records a run, instead of
    failing inside the first step."""
    import torch._inductor.config as inductor_config
    from torch._inductor import cpp_builder

    # the config's own patch restores it as it was (monkeypatch's setattr/undo left
    # `cpp.cxx` hidden from the next compile in this process)
    cpp_builder.cpp_compiler_search.cache_clear()
    try:
        with inductor_config.patch({"cpp.cxx": ("/nonexistent/g++",)}):
            with pytest.raises(BadInput) as err:
                train(_recipe("train.compile=true", "train.device=cpu"), progress=False)
    finally:
        cpp_builder.cpp_compiler_search.cache_clear()
    assert "train.compile=true cannot work on cpu: no C++ compiler" in err.value.message
    assert "train.compile=false" in err.value.hint
    assert not list((workdir / "mlruns").glob("*/*/meta.yaml"))  # no run was recorded


def _final(run_id):
    path = local_path(get_run(run_id).artifact_uri) / checkpoint.FINAL
    return checkpoint.load(path)


@pytest.mark.slow  # torch.compile of the toy's two networks: ~1 min on 2 busy CPU cores
def test_compiled_run_trains_as_eager_resumes_bitwise_and_loads_in_eager_code(workdir, monkeypatch):
    import torch._dynamo

    overrides = ["train.steps=6", "train.checkpoint_every=2", "train.device=cpu"]
    torch._dynamo.utils.counters.clear()
    compiled = _final(train(_recipe(*overrides, "train.compile=true"), progress=False).run_id)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 2  # it did compile
    eager = _final(train(_recipe(*overrides), progress=False).run_id)

    # the same keys as an eager run's (no `_orig_mod.`), and the same training up to rounding
    for part in ("nets", "ema"):
        assert compiled[part].keys() == eager[part].keys()
        for name, state in compiled[part].items():
            assert state.keys() == eager[part][name].keys()
            assert not any("_orig_mod" in k for k in state)
            for k, v in state.items():
                torch.testing.assert_close(v, eager[part][name][k], rtol=1e-4, atol=1e-5)

    # eager code loads it and samples from it
    info = DataInfo(**compiled["data_info"])
    nets = toy.build(toy.ToyConfig(latent=4), info)
    for name, net in nets.items():
        net.load_state_dict(compiled["nets"][name])
    images = toy.ToySampler(toy.ToyConfig(latent=4), nets, info).sample(
        3, toy.ToyOptions(), torch.Generator().manual_seed(0)
    )
    assert images.shape == (3, info.channels, info.image_size, info.image_size)

    # an interrupted compiled run resumes (compiled) to the same weights, bitwise
    original = toy.ToyObjective.loss

    def loss_with_ctrl_c(self, group, batch, step):
        if step == 3 and group == "g":
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, group, batch, step)

    monkeypatch.setattr(toy.ToyObjective, "loss", loss_with_ctrl_c)
    first = train(_recipe(*overrides, "train.compile=true"), progress=False)
    assert first.interrupted and first.step == 4
    monkeypatch.setattr(toy.ToyObjective, "loss", original)
    resumed = train(_recipe(*overrides, "train.compile=true"), resume=first.run_id, progress=False)
    assert resumed.step == 6
    again = _final(first.run_id)
    for part in ("nets", "ema"):
        for name, state in compiled[part].items():
            for k, v in state.items():
                assert torch.equal(v, again[part][name][k]), (part, name, k)
