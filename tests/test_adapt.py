"""Adaptation methods: what trains and what stays bit-identical; read-outs; the few-shot prompt format."""

from __future__ import annotations

import random
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from hyenadna.adapt import FinetuneModule, SoftPrompt, label_token_ids, prompt_init_ids
from hyenadna.icl import build_prompt, demonstration, evaluate_icl, sample_demos
from hyenadna.model import HyenaConfig, HyenaDNAForCausalLM
from hyenadna.tasks import Split, TaskDataModule
from hyenadna.tokenizer import CharTokenizer

SEP, PAD = CharTokenizer.SEP_ID, CharTokenizer.PAD_ID


def tiny_lm(seed: int = 0, l_max: int = 64) -> HyenaDNAForCausalLM:
    torch.manual_seed(seed)
    return HyenaDNAForCausalLM(HyenaConfig(d_model=16, n_layer=2, d_inner=32, l_max=l_max, filter_order=8))


@pytest.fixture
def task_dir(tmp_path: Path) -> Path:
    rng = random.Random(0)
    for split in ("train", "valid", "test"):
        rows = ["sequence,label"] + [f"{''.join(rng.choice('ACGT') for _ in range(rng.randint(8, 16)))},{i % 3}"
                                     for i in range(12)]
        (tmp_path / f"{split}.csv").write_text("\n".join(rows) + "\n")
    return tmp_path


def train_steps(module: FinetuneModule, task_dir: Path, add_eos: bool, steps: int = 3) -> None:
    dm = TaskDataModule(str(task_dir), batch_size=4, padding_side="left")
    dm.resolve_max_length(module.config.l_max - (module.prompt.embeds.shape[0] if module.prompt else 0), add_eos)
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         limit_val_batches=0)
    trainer.fit(module, datamodule=dm)


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def opt(**kw):  # noqa: ANN003, ANN201
    return lambda params: torch.optim.AdamW(params, lr=1e-2, **kw)


@pytest.mark.parametrize("readout", ["head", "token"])
def test_soft_prompt_trains_only_prompt_and_head(task_dir: Path, readout: str) -> None:
    module = FinetuneModule(tiny_lm(), 3, method="soft_prompt", readout=readout, n_soft_tokens=4,
                            optimizer=opt(weight_decay=0.1))
    backbone, prompt = snapshot(module.model.backbone), module.prompt.embeds.detach().clone()
    head = snapshot(module.model.head) if readout == "head" else None
    lm_head = module.model.lm_head.weight.detach().clone() if readout == "token" else None
    train_steps(module, task_dir, add_eos=readout == "token")
    for k, v in module.model.backbone.state_dict().items():
        assert torch.equal(v, backbone[k]), f"frozen backbone tensor {k} changed"
    assert not torch.equal(module.prompt.embeds, prompt)
    if readout == "head":
        assert all(not torch.equal(v, head[k]) for k, v in module.model.head.state_dict().items())
    else:
        assert torch.equal(module.model.lm_head.weight, lm_head)


def test_linear_probe_trains_only_the_head(task_dir: Path) -> None:
    module = FinetuneModule(tiny_lm(), 3, method="linear_probe", pooling="mean", optimizer=opt(weight_decay=0.1))
    backbone, head = snapshot(module.model.backbone), snapshot(module.model.head)
    train_steps(module, task_dir, add_eos=False)
    for k, v in module.model.backbone.state_dict().items():
        assert torch.equal(v, backbone[k]), f"frozen backbone tensor {k} changed"
    assert all(not torch.equal(v, head[k]) for k, v in module.model.head.state_dict().items())
    assert module.prompt is None


def test_full_finetune_moves_every_weight(task_dir: Path) -> None:
    module = FinetuneModule(tiny_lm(), 3, method="full", optimizer=opt(weight_decay=0.0))
    before = {k: p.detach().clone() for k, p in module.named_parameters()}
    train_steps(module, task_dir, add_eos=False)
    unchanged = [k for k, p in module.named_parameters() if torch.equal(p, before[k])]
    assert not unchanged, f"full finetuning left {unchanged} untouched"


def test_frozen_backbone_stays_in_eval_mode() -> None:
    module = FinetuneModule(tiny_lm(), 2, method="soft_prompt", n_soft_tokens=2)
    module.train()
    assert not module.model.backbone.training and module.prompt.training and module.model.head.training
    full = FinetuneModule(tiny_lm(), 2, method="full").train()
    assert full.model.backbone.training


def test_soft_prompt_is_checked_and_never_pooled() -> None:
    lm = tiny_lm(l_max=32)
    module = FinetuneModule(lm, 2, method="soft_prompt", n_soft_tokens=8, pooling="mean").eval()
    ids = torch.randint(7, 11, (2, 24))
    assert module(ids).shape == (2, 2)
    with pytest.raises(ValueError, match=r"25 tokens \+ 8 soft-prompt positions = 33 exceeds the model's l_max=32"):
        module(torch.randint(7, 11, (2, 25)))
    # The head sees only the sequence positions: pooled from hidden[:, P:], so changing the
    # prompt changes the result (it conditions the sequence), but its own outputs never enter.
    hidden = module.model.backbone(ids, module.prompt())
    expected = module.model.head(hidden[:, 8:].mean(1))
    assert torch.allclose(module(ids), expected, atol=1e-6)
    with pytest.raises(ValueError, match="n_soft_tokens >= 1"):
        FinetuneModule(tiny_lm(), 2, method="soft_prompt", n_soft_tokens=0)
    with pytest.raises(ValueError, match="linear_probe trains only the head"):
        FinetuneModule(tiny_lm(), 2, method="linear_probe", readout="token")


def test_soft_prompt_init_and_dropout() -> None:
    torch.manual_seed(0)
    p = SoftPrompt(4096, 16, dropout=0.1)
    assert abs(float(p.embeds.std()) - 0.02) < 1e-3 and abs(float(p.embeds.mean())) < 1e-3
    p.eval()
    assert torch.equal(p(), p.embeds)
    p.train()
    assert float((p() == 0).float().mean()) == pytest.approx(0.1, abs=0.01)


def test_label_tokens_follow_the_paper() -> None:
    tok = CharTokenizer.token_to_id
    assert label_token_ids(2) == [tok["A"], tok["N"]]
    assert label_token_ids(3) == [tok["A"], tok["G"], tok["N"]]
    assert label_token_ids(2, ["C", "T"]) == [tok["C"], tok["T"]]
    with pytest.raises(ValueError, match="defaults for 2-5"):
        label_token_ids(7)
    with pytest.raises(ValueError, match="not in the vocabulary"):
        label_token_ids(2, ["A", "Z"])


def test_token_readout_reads_the_last_real_position() -> None:
    lm = tiny_lm()
    module = FinetuneModule(lm, 2, method="soft_prompt", readout="token", n_soft_tokens=3).eval()
    seq = torch.tensor([[7, 8, 9, 10, 7, SEP]])
    right = torch.tensor([[7, 8, 9, 10, 7, SEP, PAD, PAD]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 0, 0]])
    ref = lm(seq, prefix_embeds=module.prompt()).logits[:, -1]
    assert torch.allclose(module(right, mask), ref, atol=1e-5)  # causal: right padding is never seen
    assert torch.allclose(module(seq), ref, atol=1e-6)


def test_few_shot_prompt_has_the_paper_format() -> None:
    a, n = label_token_ids(2)
    demo = demonstration(np.array([7, 8, 9]), a, max_length=5)
    assert demo.tolist() == [PAD, PAD, 7, 8, 9, SEP, a, SEP]
    prompt = build_prompt(np.array([10, 10]), [(np.array([7, 8, 9]), a), (np.array([8, 8, 8, 8]), n)], max_length=4)
    assert prompt.tolist() == [PAD, 7, 8, 9, SEP, a, SEP, 8, 8, 8, 8, SEP, n, SEP, 10, 10, SEP]
    train = Split(["ACGT"] * 6, np.array([0, 1, 0, 1, 0, 1]), ["x"] * 6)
    idx = sample_demos(train, 2, shots=2, rng=random.Random(0), exclude=0)
    assert len(idx) == 4 and len(set(idx)) == 4 and 0 not in idx
    assert sorted(int(train.labels[i]) for i in idx) == [0, 0, 1, 1]
    with pytest.raises(ValueError, match="fewer than shots=4"):
        sample_demos(train, 2, shots=4, rng=random.Random(0))


def test_icl_evaluation_runs_and_checks_length() -> None:
    lm = tiny_lm(l_max=64)
    train = Split(["ACGTAC", "GGGTTA", "ACGTTT", "GGGAAA"], np.array([0, 1, 0, 1]), ["x"] * 4)
    res = evaluate_icl(lm, train, train, num_classes=2, shots=1, max_length=6)
    assert res["n"] == 4 and 0.0 <= res["accuracy"] <= 1.0
    with pytest.raises(ValueError, match="more than the model's l_max=64"):
        evaluate_icl(lm, train, train, num_classes=2, shots=4, max_length=6)


@pytest.mark.parametrize("problem_type,labels", [
    ("multi_label", torch.tensor([[1, 0, 1], [0, 1, 1], [1, 1, 0], [0, 0, 1]])),
    ("regression", torch.tensor([[0.5], [-1.0], [2.0], [0.0]])),
    ("single_label", torch.tensor([0, 1, 2, 1])),
])
def test_losses_and_metrics_for_every_problem_type(problem_type: str, labels: torch.Tensor) -> None:
    n = labels.shape[1] if labels.dim() == 2 else 3
    module = FinetuneModule(tiny_lm(), n, problem_type=problem_type, method="full", pooling="mean").eval()
    batch = {"input_ids": torch.randint(7, 11, (4, 12)), "attention_mask": torch.ones(4, 12, dtype=torch.long),
             "labels": labels}
    scores, loss = module.scores_and_loss(batch)
    assert scores.shape == (4, n) and torch.isfinite(loss)
    module._update(module.val_metrics, scores, labels)
    values = module.val_metrics.compute()
    expected = {"regression": {"val/mse", "val/r2", "val/pearson"}}.get(
        problem_type, {"val/acc", "val/mcc", "val/f1", "val/auroc"})
    assert set(values) == expected
    if problem_type == "regression":
        assert float(values["val/mse"]) == pytest.approx(float(loss), rel=1e-5)


def test_suffix_prompt_is_read_by_the_last_position_and_pooled() -> None:
    lm = tiny_lm().eval()
    ids = torch.randint(7, 11, (2, 10))
    mask = torch.ones(2, 10, dtype=torch.long)
    for readout in ("head", "token"):
        module = FinetuneModule(lm, 2, method="soft_prompt", readout=readout, n_soft_tokens=3, pooling="last",
                                prompt_position="suffix").eval()
        prompt = module.prompt()
        hidden = lm.backbone(ids, suffix_embeds=prompt)
        assert hidden.shape == (2, 13, 16)
        # causal: the sequence positions are those of the sequence alone; only the prompt's see both
        assert torch.allclose(hidden[:, :10], lm.backbone(ids), atol=1e-5)
        last = module.model.head(hidden[:, -1]) if readout == "head" else lm.lm_head(hidden[:, -1])
        assert torch.allclose(module(ids, mask), last, atol=1e-5)
        assert torch.allclose(module(ids), last, atol=1e-5)
    mean = FinetuneModule(lm, 2, method="soft_prompt", n_soft_tokens=3, pooling="mean",
                          prompt_position="suffix").eval()
    left = torch.cat([torch.full((2, 2), PAD), ids], 1)
    lmask = torch.cat([torch.zeros(2, 2, dtype=torch.long), mask], 1)
    hidden = lm.backbone(left, suffix_embeds=mean.prompt())
    assert torch.allclose(mean(left, lmask), mean.model.head(hidden[:, 2:].mean(1)), atol=1e-5)
    with pytest.raises(ValueError, match="prompt_position must be one of"):
        FinetuneModule(lm, 2, method="soft_prompt", n_soft_tokens=3, prompt_position="middle")
    with pytest.raises(ValueError, match=r"60 tokens \+ 8 soft-prompt positions = 68 exceeds the model's l_max=64"):
        FinetuneModule(lm, 2, method="soft_prompt", n_soft_tokens=8, prompt_position="suffix").eval()(
            torch.randint(7, 11, (1, 60)))


def test_prompt_init_from_sequence_and_vocab_embeddings() -> None:
    lm = tiny_lm()
    seq = torch.tensor([7, 8, 9, 10, 10])
    module = FinetuneModule(lm, 2, method="soft_prompt", n_soft_tokens=12, prompt_init="sequence",
                            prompt_init_sequence=seq)
    tiled = seq.repeat(3)[:12]
    assert torch.equal(module.prompt.embeds.detach(), lm.backbone.embeddings(tiled).detach())
    vocab = FinetuneModule(lm, 2, method="soft_prompt", n_soft_tokens=6, prompt_init="vocab").prompt.embeds.detach()
    bases = lm.backbone.embeddings(torch.arange(7, 11)).detach()
    assert all(any(torch.equal(row, b) for b in bases) for row in vocab)
    assert prompt_init_ids("noise", 4) is None
    with pytest.raises(ValueError, match="prompt_init must be one of"):
        prompt_init_ids("zeros", 4)


def test_frozen_backbone_has_no_dropout_while_training() -> None:
    torch.manual_seed(0)
    lm = HyenaDNAForCausalLM(HyenaConfig(d_model=16, n_layer=2, d_inner=32, l_max=64, filter_order=8,
                                         embed_dropout=0.5, resid_dropout=0.5))
    ids = torch.randint(7, 11, (2, 12))
    frozen = FinetuneModule(lm, 2, method="soft_prompt", n_soft_tokens=4, prompt_dropout=0.0).train()
    assert torch.equal(frozen(ids), frozen(ids))  # the backbone's dropout is off
    full = FinetuneModule(lm, 2, method="full").train()
    assert not torch.equal(full(ids), full(ids))  # ...and would change the output if it were on
