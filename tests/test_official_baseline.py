"""The official-structured baseline of the benchmarks (benchmarks/official.py) computes our model.

The ratios in benchmarks/README.md are only meaningful if `OfficialLM.from_ours(model)` is the
same function of the same weights: logits, loss and every parameter gradient are held to ours
within fp32 rounding (its FFTs run at n = 2L, ours at a 5-smooth size, so values differ by a few
ulps of the activations, amplified by the depth).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from official import OfficialLM  # noqa: E402

from hyenadna.model import HyenaConfig, HyenaDNAForCausalLM  # noqa: E402

# fp32 eps is 1.2e-7; a forward + backward through two blocks, FFTs of 2L points and a mean over
# ~500 tokens accumulates a few hundred ulps at most in a relative norm.
RTOL = 3e-5


def _pair(**kw):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    ours = HyenaDNAForCausalLM(HyenaConfig(d_model=32, n_layer=2, l_max=300, **kw))
    return ours, OfficialLM.from_ours(ours)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("train", [False, True])
def test_logits_loss_and_grads_equal_ours(train: bool) -> None:
    ours, official = _pair()
    ids = torch.randint(0, 16, (2, 257))
    x, y = ids[:, :-1], ids[:, 1:]
    ours.train(train), official.train(train)
    torch.manual_seed(3)  # the same embedding-dropout mask in both (train mode)
    out = ours(x, targets=y)
    out.loss.backward()
    torch.manual_seed(3)
    logits = official(x)
    loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]), y.reshape(-1))
    loss.backward()
    assert _rel(out.logits, logits) < RTOL
    assert abs(out.loss.item() - loss.item()) <= RTOL * abs(loss.item())
    grads = dict(official.named_parameters())
    for name, p in ours.named_parameters():
        assert _rel(p.grad, grads[name].grad) < RTOL, name


def test_from_ours_loads_every_weight_strictly() -> None:
    ours, official = _pair()
    theirs = official.state_dict()
    assert set(theirs) == set(ours.state_dict())
    for k, v in ours.state_dict().items():
        assert torch.equal(v, theirs[k]), k
    # tied head, as the official ConvLMHeadModel
    assert official.lm_head.weight is official.backbone.embeddings.word_embeddings.weight


def test_a_wrong_weight_is_caught() -> None:
    ours, official = _pair()
    with torch.no_grad():
        official.backbone.layers[1].mixer.filter_fn.bias[0] += 0.1
    x = torch.randint(0, 16, (1, 128))
    assert _rel(ours.eval()(x).logits, official.eval()(x)) > RTOL
