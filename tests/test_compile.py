"""Opt-in torch.compile (hyenadna.compile): compiled equals eager, the fallback is real, checkpoints unchanged.

The compiled model is built once per module: compilation dominates this file's run time.
"""

from __future__ import annotations

import copy
import csv
import json
import functools
import warnings
from pathlib import Path

import pytest
import torch
import torch._inductor.compile_fx as inductor
from hydra import compose, initialize_config_dir
from torch._dynamo.utils import counters

from hyenadna.checkpoint import load_pretrained
from hyenadna.compile import check_compile_flag, compile_model, is_compiled
from hyenadna.lm import CausalLMModule
from hyenadna.model import HyenaConfig, HyenaDNAForCausalLM
from hyenadna.pretrain import fit

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# No embedding dropout, so training-mode outputs of two models with the same weights are comparable.
CFG = HyenaConfig(d_model=32, n_layer=2, d_inner=128, l_max=66, embed_dropout=0.0)
L = 64


def assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    """fp32 agreement to rtol 1e-5, with an absolute floor scaled to the tensor (sums of many terms)."""
    atol = 1e-6 * max(float(expected.abs().max()), 1.0)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=atol, msg=lambda m: f"{what}: {m}")


def train_step(model: HyenaDNAForCausalLM, ids: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Logits and parameter gradients of one forward + backward of the LM loss."""
    model.zero_grad(set_to_none=True)
    out = model(ids, targets=ids.roll(-1, dims=1))
    out.loss.backward()
    return out.logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.fixture(scope="module")
def models() -> tuple[HyenaDNAForCausalLM, HyenaDNAForCausalLM]:
    """(eager, compiled) with the same weights."""
    torch.manual_seed(0)
    eager = HyenaDNAForCausalLM(CFG)
    return eager, compile_model(copy.deepcopy(eager))


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    return torch.randint(7, 11, (2, L), generator=torch.Generator().manual_seed(1))


def test_train_mode_logits_and_gradients_equal_eager(models, ids) -> None:
    eager, compiled = models
    eager.train(), compiled.train()
    graphs = counters["stats"]["unique_graphs"]
    logits_c, grads_c = train_step(compiled, ids)
    assert is_compiled(compiled) and counters["stats"]["unique_graphs"] > graphs, "the blocks did not compile"
    logits_e, grads_e = train_step(eager, ids)
    assert_close(logits_c, logits_e, "logits")
    assert grads_c.keys() == grads_e.keys()
    for name in grads_e:
        assert_close(grads_c[name], grads_e[name], f"gradient of {name}")


def test_eval_no_grad_logits_equal_eager_at_two_lengths(models, ids) -> None:
    eager, compiled = models
    eager.eval(), compiled.eval()
    try:
        with torch.no_grad():
            for x in (ids, ids[:1, :37]):  # a new shape recompiles
                assert_close(compiled(x).logits, eager(x).logits, f"eval logits at {tuple(x.shape)}")
    finally:
        eager.train(), compiled.train()
    assert is_compiled(compiled)


def test_state_dict_keys_and_checkpoints_are_unchanged(models, ids, tmp_path) -> None:
    eager, compiled = models
    assert list(compiled.state_dict()) == list(eager.state_dict())
    assert not any("_orig_mod" in k for k in compiled.state_dict())
    compiled.save_pretrained(tmp_path / "saved")
    reloaded = load_pretrained(tmp_path / "saved").eval()
    for name, tensor in compiled.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], tensor), name
    # The Lightning module's state dict is what its checkpoints store: model.* keys, no wrapper prefix.
    module = CausalLMModule(CFG, optimizer=torch.optim.AdamW)
    keys = list(module.state_dict())
    compile_model(module.model)
    assert list(module.state_dict()) == keys
    torch.save({"state_dict": module.state_dict(), "hyena_config": CFG.to_dict(),
                "pytorch-lightning_version": "2.6.6"}, tmp_path / "last.ckpt")
    loaded = load_pretrained(tmp_path / "last.ckpt")
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in module.model.state_dict().items())


def test_a_deep_copy_is_eager_and_runs_its_own_weights(models, ids) -> None:
    # nn.Module drops _compiled_call_impl when copied: the copy must not call this model's graph.
    eager, compiled = models
    twin, expected = copy.deepcopy(compiled), copy.deepcopy(eager)
    with torch.no_grad():
        twin.lm_head.weight.mul_(2.0)  # tied to the embedding: changes the blocks' input too
        expected.lm_head.weight.mul_(2.0)
    assert not is_compiled(twin) and is_compiled(compiled)
    assert torch.equal(train_step(twin, ids)[0], train_step(expected, ids)[0])


def test_bad_input_raises_its_own_error_and_keeps_the_model_compiled(models) -> None:
    _, compiled = models
    block = compiled.backbone.layers[0]
    with pytest.raises(ValueError, match="exceeds l_max"):
        block(torch.randn(1, CFG.l_max + 1, CFG.d_model))
    assert is_compiled(compiled)


@pytest.mark.parametrize("failing", ["forward", "backward"])
def test_a_failing_backend_falls_back_to_eager_with_one_warning(monkeypatch, failing: str) -> None:
    def inner_compile(gm, example_inputs, **kwargs):
        if kwargs.get("is_backward", False) == (failing == "backward"):
            raise RuntimeError(f"simulated inductor failure ({failing})")
        return inductor.compile_fx_inner(gm, example_inputs, **kwargs)

    monkeypatch.setattr(inductor, "compile_fx", functools.partial(inductor.compile_fx, inner_compile=inner_compile))
    torch.manual_seed(2)
    cfg = HyenaConfig(d_model=16, n_layer=2, d_inner=32, l_max=66, embed_dropout=0.0)  # a shape no cached graph fits
    eager = HyenaDNAForCausalLM(cfg)
    compiled = compile_model(copy.deepcopy(eager))
    ids = torch.randint(7, 11, (2, 48))
    expected = rf"torch.compile .* failed \(RuntimeError: simulated inductor failure \({failing}\)\)"
    with pytest.warns(RuntimeWarning, match=expected):
        logits_c, grads_c = train_step(compiled, ids)
    assert not is_compiled(compiled)
    logits_e, grads_e = train_step(eager, ids)
    assert torch.equal(logits_c, logits_e)
    assert all(torch.equal(grads_c[n], grads_e[n]) for n in grads_e)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one warning, not one per call
        train_step(compiled, ids)


def test_compile_model_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="compile mode must be one of"):
        compile_model(HyenaDNAForCausalLM(CFG), mode="fastest")
    with pytest.raises(ValueError, match="holds no hyenadna Block"):
        compile_model(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("config_name", ["train", "finetune"])
def test_config_switch_is_off_by_default_and_checked(config_name: str) -> None:
    with initialize_config_dir(config_dir=str(CONFIGS / config_name), version_base="1.3"):
        assert compose(config_name).compile is False
        assert check_compile_flag(compose(config_name, overrides=["compile=true"]).compile) is True
        bad = compose(config_name, overrides=["compile=yes"]).compile
    with pytest.raises(ValueError, match="compile must be true or false, got 'yes'"):
        check_compile_flag(bad)


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")  # the smoke experiment sets torch_threads: 1; restore the count after
def test_smoke_pretraining_compiled_matches_the_golden_losses(tmp_path) -> None:
    """`python train.py experiment=smoke compile=true`: the golden (eager) losses and a loadable checkpoint."""
    with initialize_config_dir(config_dir=str(CONFIGS / "train"), version_base="1.3"):
        cfg = compose("train", overrides=[f"output_dir={tmp_path}", "experiment=smoke", "compile=true"])
    graphs = counters["stats"]["unique_graphs"]
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="torch.compile of the Hyena blocks failed")
        result = fit(cfg)
    assert counters["stats"]["unique_graphs"] > graphs, "the blocks did not compile"
    with open(tmp_path / "metrics.csv", newline="") as f:
        got = [float(row["train/loss"]) for row in csv.DictReader(f) if row["train/loss"]]
    golden = json.loads((Path(__file__).parent / "assets" / "golden_losses.json").read_text())["losses"]
    assert got[:len(golden)] == pytest.approx(golden, rel=1e-3, abs=2e-3)
    assert load_pretrained(result["last_checkpoint"]).config.d_model == 32
