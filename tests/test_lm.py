"""LightningModule, optimizer groups, schedule and the Markov baseline."""

from __future__ import annotations

import math
from functools import partial

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from hyenadna.baselines import MarkovBaseline
from hyenadna.lm import CausalLMModule, rng_state, set_rng_state
from hyenadna.model import HyenaConfig, count_parameters
from hyenadna.optim import cosine_warmup_scheduler, cosine_with_warmup, parameter_groups

TINY = dict(d_model=32, n_layer=2, d_inner=64, l_max=66)

pytestmark = pytest.mark.usefixtures("one_thread")


def module(**kwargs) -> CausalLMModule:
    torch.manual_seed(0)
    return CausalLMModule(HyenaConfig(**TINY), optimizer=partial(torch.optim.AdamW, lr=1e-2, weight_decay=0.1), **kwargs)


def windows(n: int, length: int = 64, pad: int = 0, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Random DNA windows; the last `pad` positions are padding (PAD input, -100 target)."""
    g = torch.Generator().manual_seed(seed)
    items = []
    for _ in range(n):
        seq = torch.randint(7, 11, (length + 1,), generator=g)
        x, y = seq[:-1].clone(), seq[1:].clone()
        if pad:
            x[length - pad:], y[length - pad:] = 4, -100
        items.append({"input_ids": x, "targets": y})
    return items


def trainer(**kwargs) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, **kwargs)


def test_loss_ignores_padding_exactly() -> None:
    m = module().eval()
    padded = windows(2, pad=24)
    batch = {k: torch.stack([w[k] for w in padded]) for k in ("input_ids", "targets")}
    loss_sum, n, _ = m._token_stats(batch)
    # Causal model: the first 40 positions do not see the padding, so the loss equals the loss of the
    # unpadded 40-token prefixes.
    prefix = {k: v[:, :40] for k, v in batch.items()}
    ref = torch.nn.functional.cross_entropy(m(prefix["input_ids"]).flatten(0, 1), prefix["targets"].flatten())
    assert int(n) == 80
    assert float(loss_sum / n) == pytest.approx(float(ref), rel=1e-5)


def test_validation_metrics_are_token_weighted_over_the_whole_set() -> None:
    m = module()
    data = windows(3, pad=0) + windows(2, pad=50, seed=1)
    out = trainer().validate(m, DataLoader(data, batch_size=2), verbose=False)[0]
    m.eval()
    total, count, correct = 0.0, 0, 0
    with torch.no_grad():
        for w in data:
            s, n, c = m._token_stats({k: v[None] for k, v in w.items()})
            total, count, correct = total + float(s), count + int(n), correct + int(c)
    assert out["val/loss"] == pytest.approx(total / count, rel=1e-5)
    assert out["val/ppl"] == pytest.approx(math.exp(total / count), rel=1e-5)
    assert out["val/acc"] == pytest.approx(correct / count, rel=1e-5)


def test_training_logs_metrics_and_learns() -> None:
    m = module(scheduler=partial(cosine_warmup_scheduler, warmup_fraction=0.1, min_lr_ratio=0.1))
    data = windows(4) * 8  # the same 4 windows: memorisable
    batch = {k: torch.stack([w[k] for w in data[:4]]) for k in ("input_ids", "targets")}
    with torch.no_grad():
        s, n, _ = m.eval()._token_stats(batch)
    t = trainer(max_steps=16)
    t.fit(m, DataLoader(data, batch_size=4))
    metrics = t.callback_metrics
    for key in ("train/loss", "train/ppl", "train/acc", "train/tokens_per_s", "train/grad_norm", "train/lr"):
        assert key in metrics and torch.isfinite(metrics[key]), key
    assert float(metrics["train/loss"]) < float(s / n) - 0.05
    # The cosine horizon is the real number of optimizer steps (16, warmup 2): step 15 is 13/14 of the way.
    assert float(metrics["train/lr"]) == pytest.approx(1e-2 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 13 / 14))), rel=1e-4)


def test_nan_loss_stops_with_the_step_number() -> None:
    m = module()

    class Poison(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):  # noqa: ANN001
            if trainer.global_step == 3:
                with torch.no_grad():
                    pl_module.model.lm_head.weight.fill_(float("nan"))

    with pytest.raises(FloatingPointError, match="optimizer step 3"):
        trainer(max_steps=10, callbacks=[Poison()]).fit(m, DataLoader(windows(8), batch_size=2))


def test_parameter_groups_follow_the_paper() -> None:
    model = module().model
    groups = {g["name"]: g for g in parameter_groups(model, 0.1)}
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay = {names[id(p)] for p in groups["no_decay"]["params"]}
    decay = {names[id(p)] for p in groups["decay"]["params"]}
    assert not no_decay & decay
    assert sum(p.numel() for g in groups.values() for p in g["params"]) == count_parameters(model)
    assert groups["decay"]["weight_decay"] == 0.1 and groups["no_decay"]["weight_decay"] == 0.0
    for n in no_decay | decay:
        exempt = (".implicit_filter." in n or n.endswith("bias") or "norm" in n or "ln_f" in n
                  or "word_embeddings" in n)
        assert (n in no_decay) == exempt, n
    assert any(n.endswith("implicit_filter.1.freq") for n in no_decay)
    assert any(n.endswith("filter_fn.bias") for n in no_decay)
    assert any(n.endswith("short_filter.weight") for n in decay)


def test_cosine_schedule_shape() -> None:
    lrs = [cosine_with_warmup(s, warmup_steps=10, total_steps=100, min_lr_ratio=0.1) for s in range(101)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a <= b for a, b in zip(lrs[:10], lrs[1:10]))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[100] == pytest.approx(0.1) and lrs[55] == pytest.approx(0.55)
    with pytest.raises(ValueError, match="max_steps"):
        cosine_warmup_scheduler(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0), total_steps=float("inf"))


def test_rng_state_roundtrip_is_checkpoint_safe(tmp_path) -> None:  # noqa: ANN001
    state = rng_state()
    a = (torch.rand(3), np.random.rand(3), __import__("random").random())
    torch.save(state, tmp_path / "rng.pt")
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    b = (torch.rand(3), np.random.rand(3), __import__("random").random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_markov_baseline() -> None:
    rng = np.random.default_rng(0)
    iid = rng.integers(7, 11, 200_000)
    periodic = np.tile(np.array([7, 8, 9, 10, 10, 9]), 20_000)

    def items(ids: np.ndarray, n: int = 20, length: int = 100) -> list[dict[str, np.ndarray]]:
        return [{"input_ids": ids[i * length:(i + 1) * length], "targets": ids[i * length + 1:(i + 1) * length + 1]}
                for i in range(n)]

    assert MarkovBaseline(3).fit([iid[:150_000]]).perplexity(items(iid[150_000:])) == pytest.approx(4.0, abs=0.05)
    # Period 6 with a repeated context of length 1 (10 -> 10 or 9): order 2 is exact, order 1 is not.
    assert MarkovBaseline(2).fit([periodic]).perplexity(items(periodic)) < 1.1
    assert MarkovBaseline(1).fit([periodic]).perplexity(items(periodic)) > 1.2
    # Order 1 by hand: P(next | prev) from counts with add-one smoothing.
    m = MarkovBaseline(1).fit([np.array([7, 8, 7, 8, 7, 7])])
    # transitions: A->C x2, C->A x2, A->A x1
    x, y = np.array([7, 8]), np.array([8, -100])
    nll, n = m.nll(x, y)
    assert n == 1 and nll == pytest.approx(-math.log((2 + 1) / (3 + 5)))
    with pytest.raises(ValueError, match="order"):
        MarkovBaseline(0)
