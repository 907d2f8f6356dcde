"""Adapting a pretrained HyenaDNA to a labelled task: soft prompts, linear probe, full finetuning.

One switch, ``method``:

- ``soft_prompt``: ``n_soft_tokens`` learnable vectors (with dropout) fed to the blocks beside the
  token embeddings (HyenaDNA paper, in-context learning section); the whole backbone is frozen
  (and kept in eval mode: no dropout) and only the prompt (and the head, for ``readout=head``)
  trains. ``prompt_position``: ``prefix`` (the paper's: before the sequence) or ``suffix`` (after
  it, so the causal model's last position reads the sequence and the prompt together).
  ``prompt_init``: ``noise`` (N(0, 0.02)), ``vocab`` (embeddings of random bases) or ``sequence``
  (the embeddings of a real training sequence, tiled to the prompt's length).
- ``linear_probe``: frozen backbone, only the linear head trains.
- ``full``: every weight trains (a soft prompt may be added on top).

Two read-outs: ``head`` (a linear classifier on the pooled hidden state) and ``token`` (the
paper's: classes are written as nucleotide tokens and predicted by the frozen, tied LM head at the
last position, [SEP] for a prefix prompt, the prompt's last token for a suffix one). A prefix
prompt's positions never enter the pooling; a suffix prompt's do (they are the only positions that
see it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
import torchmetrics
from torch import Tensor, nn

from hyenadna.model import HyenaConfig, HyenaDNAForCausalLM, HyenaDNAForSequenceClassification, pool_hidden
from hyenadna.optim import lightning_optimizers
from hyenadna.tokenizer import CharTokenizer

Method = Literal["soft_prompt", "linear_probe", "full"]
Readout = Literal["head", "token"]
METHODS = ("soft_prompt", "linear_probe", "full")
PROMPT_POSITIONS = ("prefix", "suffix")
PROMPT_INITS = ("noise", "vocab", "sequence")

# The paper's label tokens: {0: A, 1: N} for two classes, {0: A, 1: G, 2: N} for three
# (icl_genomics_dataset.py); we extend the same idea to the other nucleotides for 4 and 5.
DEFAULT_LABEL_TOKENS: dict[int, tuple[str, ...]] = {
    2: ("A", "N"), 3: ("A", "G", "N"), 4: ("A", "C", "G", "T"), 5: ("A", "C", "G", "T", "N")}


def label_token_ids(num_classes: int, tokens: list[str] | None = None) -> list[int]:
    """Vocabulary ids that stand for the classes in the token read-out."""
    if tokens is None:
        if num_classes not in DEFAULT_LABEL_TOKENS:
            raise ValueError(f"the token read-out writes classes as nucleotide tokens and has defaults for 2-5 "
                             f"classes, this task has {num_classes}; give method.label_tokens or use readout=head")
        tokens = list(DEFAULT_LABEL_TOKENS[num_classes])
    if len(tokens) != num_classes or len(set(tokens)) != num_classes:
        raise ValueError(f"label_tokens must be {num_classes} distinct tokens, got {tokens}")
    unknown = [t for t in tokens if t not in CharTokenizer.token_to_id]
    if unknown:
        raise ValueError(f"label_tokens {unknown} are not in the vocabulary {list(CharTokenizer.id_to_token)}")
    return [CharTokenizer.token_to_id[t] for t in tokens]


class SoftPrompt(nn.Module):
    """n learnable prompt embeddings (P, D), initialised N(0, init_std) or from given embeddings
    (`init`, (P, D)), with dropout."""

    def __init__(self, n_tokens: int, d_model: int, dropout: float = 0.1, init_std: float = 0.02,
                 init: Tensor | None = None) -> None:
        super().__init__()
        if n_tokens < 1:
            raise ValueError(f"a soft prompt needs n_soft_tokens >= 1, got {n_tokens}")
        if init is not None and tuple(init.shape) != (n_tokens, d_model):
            raise ValueError(f"soft prompt init must have shape ({n_tokens}, {d_model}), got {tuple(init.shape)}")
        start = torch.randn(n_tokens, d_model) * init_std if init is None else init.detach().float().clone()
        self.embeds = nn.Parameter(start)
        self.dropout = nn.Dropout(dropout)

    def forward(self) -> Tensor:
        """-> (P, D)."""
        return self.dropout(self.embeds)


def prompt_init_ids(mode: str, n_tokens: int, sequence: Tensor | None = None, seed: int = 0) -> Tensor | None:
    """Token ids whose embeddings start a soft prompt: None for ``noise``; random bases for
    ``vocab`` (a fixed draw, `seed`); `sequence` (a real training sequence's ids) tiled / cut to `n_tokens` for ``sequence``."""
    if mode not in PROMPT_INITS:
        raise ValueError(f"method.prompt_init must be one of {PROMPT_INITS}, got {mode!r}")
    if mode == "noise":
        return None
    if mode == "vocab" or sequence is None or sequence.numel() == 0:
        gen = torch.Generator().manual_seed(seed)
        return torch.randint(CharTokenizer.A_ID, CharTokenizer.A_ID + 4, (n_tokens,), generator=gen)
    seq = sequence.long().flatten()
    return seq.repeat(-(-n_tokens // seq.numel()))[:n_tokens]


def make_metrics(problem_type: str, num_labels: int) -> torchmetrics.MetricCollection:
    """Accuracy, MCC, macro F1 and AUROC for classification; MSE, Pearson r and R^2 for regression."""
    if problem_type == "single_label":
        kw = dict(task="multiclass", num_classes=num_labels)
        return torchmetrics.MetricCollection({
            "acc": torchmetrics.Accuracy(**kw), "mcc": torchmetrics.MatthewsCorrCoef(**kw),
            "f1": torchmetrics.F1Score(average="macro", **kw), "auroc": torchmetrics.AUROC(**kw)})
    if problem_type == "multi_label":
        kw = dict(task="multilabel", num_labels=num_labels)
        return torchmetrics.MetricCollection({
            "acc": torchmetrics.Accuracy(**kw), "mcc": torchmetrics.MatthewsCorrCoef(**kw),
            "f1": torchmetrics.F1Score(average="macro", **kw), "auroc": torchmetrics.AUROC(average="macro", **kw)})
    metrics: dict[str, torchmetrics.Metric] = {"mse": torchmetrics.MeanSquaredError(),
                                               "r2": torchmetrics.R2Score()}
    metrics["pearson"] = torchmetrics.PearsonCorrCoef(num_outputs=num_labels)
    return torchmetrics.MetricCollection(metrics)


def default_monitor(problem_type: str) -> tuple[str, str]:
    """The validation metric that picks the best checkpoint, and whether higher is better."""
    return {"single_label": ("val/acc", "max"), "multi_label": ("val/auroc", "max"),
            "regression": ("val/mse", "min")}[problem_type]


class FinetuneModule(pl.LightningModule):
    """Loss, metrics, freezing and optimizer for adapting a HyenaDNA LM to a labelled task."""

    def __init__(self, lm: HyenaDNAForCausalLM, num_labels: int, problem_type: str = "single_label",
                 method: Method = "full", readout: Readout = "head", pooling: str = "last",
                 n_soft_tokens: int = 0, prompt_dropout: float = 0.1, label_tokens: list[str] | None = None,
                 prompt_position: str = "prefix", prompt_init: str = "noise", prompt_init_sequence: Tensor | None = None,
                 optimizer: Callable[..., torch.optim.Optimizer] | None = None,
                 scheduler: Callable[..., Any] | None = None, label_names: list[str] | None = None) -> None:
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"method.name must be one of {METHODS}, got {method!r}")
        if readout not in ("head", "token"):
            raise ValueError(f"method.readout must be head or token, got {readout!r}")
        if method == "soft_prompt" and n_soft_tokens < 1:
            raise ValueError("method soft_prompt needs method.n_soft_tokens >= 1")
        if method == "linear_probe" and (readout != "head" or n_soft_tokens):
            raise ValueError("linear_probe trains only the head: use readout=head and n_soft_tokens=0")
        if prompt_position not in PROMPT_POSITIONS:
            raise ValueError(f"method.prompt_position must be one of {PROMPT_POSITIONS}, got {prompt_position!r}")
        if readout == "token" and problem_type != "single_label":
            raise ValueError(f"the token read-out is for single-label classification, not {problem_type}")
        self.config: HyenaConfig = lm.config
        self.method, self.readout, self.pooling = method, readout, pooling
        self.prompt_position = prompt_position
        self.problem_type, self.num_labels = problem_type, num_labels
        self.label_names = label_names or [str(i) for i in range(num_labels)]
        self.optimizer_factory = optimizer or torch.optim.AdamW
        self.scheduler_factory = scheduler
        if readout == "token":
            self.model: nn.Module = lm
            self.register_buffer("label_ids", torch.tensor(label_token_ids(num_labels, label_tokens)),
                                 persistent=False)
        else:
            clf = HyenaDNAForSequenceClassification(lm.config, num_labels, pooling=pooling, problem_type=problem_type)
            clf.backbone.load_state_dict(lm.backbone.state_dict())
            self.model = clf
        self.prompt: SoftPrompt | None = None
        if n_soft_tokens:
            ids = prompt_init_ids(prompt_init, n_soft_tokens, prompt_init_sequence)
            init = None if ids is None else lm.backbone.embeddings(ids).detach()
            self.prompt = SoftPrompt(n_soft_tokens, lm.config.d_model, prompt_dropout, init=init)
        self.frozen_backbone = method in ("soft_prompt", "linear_probe")
        if self.frozen_backbone:
            self.model.backbone.requires_grad_(False)
            if readout == "token":
                self.model.lm_head.requires_grad_(False)  # tied to the embedding: frozen with it
        metrics = make_metrics(problem_type, num_labels)
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")

    def train(self, mode: bool = True) -> FinetuneModule:
        """A frozen backbone stays in eval mode (no dropout): it is a fixed feature extractor."""
        super().train(mode)
        if self.frozen_backbone:
            self.model.backbone.eval()
        return self

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """input_ids, attention_mask (B, L) -> per-class scores (B, C), or vocabulary logits (B, V) for readout=token."""
        prompt = self.prompt() if self.prompt is not None else None
        pooling = self.pooling if self.readout == "head" else "last"
        if prompt is not None and self.prompt_position == "suffix":
            hidden = self.model.backbone(input_ids, suffix_embeds=prompt)
            if attention_mask is not None:  # the prompt's positions are real: pooled, and last
                ones = attention_mask.new_ones(attention_mask.shape[0], prompt.shape[0])
                attention_mask = torch.cat([attention_mask, ones], dim=1)
        else:
            hidden = self.model.backbone(input_ids, prompt)
            if prompt is not None:
                hidden = hidden[:, prompt.shape[0]:]
        pooled = pool_hidden(hidden, pooling, attention_mask)
        if self.readout == "head":
            return self.model.head(pooled.to(self.model.head.weight.dtype))
        # The last position ([SEP], or the suffix prompt's last) predicts the label token.
        return self.model.lm_head(pooled)

    def scores_and_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(per-class scores (B, C), loss) for a batch."""
        out = self(batch["input_ids"], batch["attention_mask"]).float()
        labels = batch["labels"]
        if self.readout == "token":
            # The paper's loss: cross-entropy over the whole vocabulary at the label position.
            loss = F.cross_entropy(out, self.label_ids[labels.long()])
            return out[:, self.label_ids], loss
        if self.problem_type == "single_label":
            return out, F.cross_entropy(out, labels.long())
        if self.problem_type == "multi_label":
            return out, F.binary_cross_entropy_with_logits(out, labels.float())
        return out, F.mse_loss(out, labels.float().view_as(out))

    def _update(self, metrics: torchmetrics.MetricCollection, scores: Tensor, labels: Tensor) -> None:
        if self.problem_type == "single_label":
            metrics.update(scores.softmax(-1), labels.long())
        elif self.problem_type == "multi_label":
            metrics.update(scores.sigmoid(), labels.long())
        else:
            metrics.update(scores.squeeze(-1) if self.num_labels == 1 else scores,
                           labels.float().view_as(scores).squeeze(-1) if self.num_labels == 1 else labels.float())

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """Loss on one batch."""
        _, loss = self.scores_and_loss(batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"training loss became {loss.item()} at optimizer step {self.global_step} (epoch "
                f"{self.current_epoch}, batch {batch_idx}); stopping. Lower method.lr, keep gradient clipping "
                f"on, or use bf16 instead of fp16 mixed precision.")
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["labels"].shape[0])
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        """Accumulate validation metrics over the whole epoch (MCC and AUROC need all of it)."""
        scores, loss = self.scores_and_loss(batch)
        self.log("val/loss", loss, prog_bar=True, batch_size=batch["labels"].shape[0])
        self._update(self.val_metrics, scores, batch["labels"])
        self.log_dict(self.val_metrics, batch_size=batch["labels"].shape[0])

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        """Accumulate test metrics."""
        scores, loss = self.scores_and_loss(batch)
        self.log("test/loss", loss, batch_size=batch["labels"].shape[0])
        self._update(self.test_metrics, scores, batch["labels"])
        self.log_dict(self.test_metrics, batch_size=batch["labels"].shape[0])

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW on the trainable parameters only (frozen ones never reach the optimizer)."""
        if not any(p.requires_grad for p in self.parameters()):
            raise ValueError("nothing to train: every parameter is frozen")
        return lightning_optimizers(self.optimizer_factory, self.scheduler_factory, self,
                                    self.trainer.estimated_stepping_batches)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store the architecture and the task's labels beside the weights."""
        checkpoint["hyena_config"] = self.config.to_dict()
        checkpoint["finetune"] = {"method": self.method, "readout": self.readout, "pooling": self.pooling,
                                  "prompt_position": self.prompt_position,
                                  "problem_type": self.problem_type, "label_names": list(self.label_names),
                                  "n_soft_tokens": 0 if self.prompt is None else int(self.prompt.embeds.shape[0])}

    def trainable_summary(self) -> str:
        """How many parameters train, out of how many."""
        total = sum(p.numel() for p in self.parameters())
        train = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return f"{self.method} ({self.readout} read-out): {train:,} of {total:,} parameters train"
