"""Thin `transformers` wrappers of our heads, for ``transformers.Trainer`` and the Auto classes.

Needs the ``[hf]`` extra (``pip install hyenadna[hf]``: transformers, accelerate); nothing else in
the package imports this module. Each wrapper holds one of our models as ``.model`` and adds only
what transformers expects of a `PreTrainedModel`: a `PretrainedConfig`, HF-style arguments and
outputs (``labels`` shifted inside the causal LM as transformers does, ``CausalLMOutput`` /
``SequenceClassifierOutput``), `from_pretrained` / `save_pretrained`. The math, the weights and
the files are ours:

* `from_pretrained` reads whatever `hyenadna.load_pretrained` reads: our folders, the original and
  ``-hf`` releases, Lightning checkpoints, Hugging Face Hub ids and released names.
* `save_pretrained` (also what ``Trainer`` calls for its checkpoints) writes our format, whose
  config.json is a flat PretrainedConfig dict, so ``AutoConfig`` reads it too.
* ``Trainer(resume_from_checkpoint=...)`` loads such a file through `load_state_dict`, which takes
  our key names and checks every key (`hyenadna.checkpoint.load_state_dict_checked`).

Importing the module registers ``model_type`` "hyenadna" with ``AutoConfig``,
``AutoModelForCausalLM`` and ``AutoModelForSequenceClassification``. No attention mask reaches the
causal LM (HyenaDNA has none; pad on the left, as the released models were trained).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import namedtuple
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.modeling_outputs import CausalLMOutput, SequenceClassifierOutput

from hyenadna import model as _ours
from hyenadna.checkpoint import (
    MODEL_TYPE,
    config_from_hf,
    config_from_json,
    config_to_json,
    load_pretrained,
    load_state_dict_checked,
    save_pretrained,
)
from hyenadna.config import HyenaConfig

# Arguments the Auto classes pass to from_pretrained; those in _HUB_ARGS must keep their defaults.
_HUB_ARGS = {"cache_dir", "force_download", "proxies", "token", "subfolder", "local_files_only"}
_AUTO_PLUMBING = _HUB_ARGS | {"trust_remote_code", "adapter_kwargs", "_from_auto", "_commit_hash", "code_revision"}
# What `load_state_dict` returns, with the fields transformers' Trainer reads.
LoadResult = namedtuple("LoadResult", ["missing_keys", "unexpected_keys"])


class HyenaDNAConfig(PretrainedConfig):
    """`PretrainedConfig` of our config.json (or of a LongSafari -hf one); `hyena_config()` is ours."""

    model_type = MODEL_TYPE

    @classmethod
    def from_hyena(cls, config: HyenaConfig, architecture: str, head: dict[str, Any] | None = None) -> HyenaDNAConfig:
        """The PretrainedConfig that our config.json for `config` (and a classifier `head`) holds."""
        return cls(**config_to_json(config, architecture, head))

    def _as_ours(self) -> dict[str, Any]:
        """This config as our config.json (format 2) dict."""
        # Whatever a bare PretrainedConfig does not have is ours, in any transformers version.
        base = set(PretrainedConfig().to_dict())
        d = {k: v for k, v in self.to_dict().items() if k not in base}
        if getattr(self, "pad_token_id", None) is not None:
            d["pad_token_id"] = self.pad_token_id
        if "format" not in d:
            if "max_seq_len" not in d:
                raise ValueError("HyenaDNAConfig holds neither our config.json fields nor a LongSafari -hf config")
            arch = (self.architectures or ["HyenaDNAForCausalLM"])[0]
            d = config_to_json(config_from_hf(d, "HyenaDNAConfig (-hf)"), arch)
        if "pooling" in d:  # a classifier: transformers keeps these two as attributes of its own
            d.update(num_labels=self.num_labels, problem_type=self.problem_type or "single_label_classification")
        return {**d, "architectures": self.architectures or []}

    def hyena_config(self) -> HyenaConfig:
        """Our `HyenaConfig` of this config (checked as the checkpoint reader checks config.json)."""
        return config_from_json(self._as_ours(), "HyenaDNAConfig")[0]

    def head(self) -> dict[str, Any]:
        """num_labels / pooling / problem_type (ours) of a classifier: its `pooling` field, else last-token."""
        d = self._as_ours()
        d.setdefault("pooling", "last")
        d.update(num_labels=self.num_labels, problem_type=self.problem_type or "single_label_classification")
        return config_from_json(d, "HyenaDNAConfig")[1]  # type: ignore[return-value]


class _Wrapper(PreTrainedModel):
    """What both heads share: config class, loading and saving in our formats, no HF init."""

    config_class = HyenaDNAConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    task: str
    model: torch.nn.Module

    supports_gradient_checkpointing = True

    def _init_weights(self, module: torch.nn.Module) -> None:
        # Our model initialises itself (the official GPT-2 style init); transformers must not redo it.
        pass

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict[str, Any] | None = None) -> None:
        """Recompute each block in backward (``HyenaConfig.gradient_checkpointing``; Trainer's flag)."""
        self.model.config.gradient_checkpointing = True

    def gradient_checkpointing_disable(self) -> None:
        """Keep the activations again."""
        self.model.config.gradient_checkpointing = False

    @classmethod
    def from_model(cls, model: torch.nn.Module) -> Any:
        """Wrap one of our models (`hyenadna.HyenaDNAForCausalLM` / `...ForSequenceClassification`)."""
        head = None
        if cls.task == "classification":
            head = {"num_labels": model.num_labels, "pooling": model.pooling, "problem_type": model.problem_type}
        wrapper = cls(HyenaDNAConfig.from_hyena(model.config, type(model).__name__, head), model=model)
        return wrapper.train(model.training)  # load_pretrained gives eval mode: keep it

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *args: Any, revision: str | None = None,
                        config: Any = None, **kwargs: Any) -> Any:
        """Any checkpoint `hyenadna.load_pretrained` reads, Hub ids included; `kwargs` go to it.

        ``config`` and the other arguments the Auto classes pass along are not needed (the
        checkpoint says it all); ``dtype`` / ``torch_dtype`` cast the loaded model.
        """
        if args:
            raise TypeError(f"{cls.__name__}.from_pretrained takes the path and keyword arguments of "
                            "hyenadna.load_pretrained only")
        for key in _AUTO_PLUMBING & set(kwargs):
            value = kwargs.pop(key)
            if key in _HUB_ARGS and value not in (None, False):
                raise TypeError(f"{cls.__name__}.from_pretrained: {key}={value!r} is not supported; the Hub is read "
                                "through the HF_HUB_CACHE / HF_HUB_OFFLINE / HF_TOKEN settings of huggingface_hub")
        dtype = kwargs.pop("dtype", None) or kwargs.pop("torch_dtype", None)
        model = cls.from_model(load_pretrained(path, task=cls.task, revision=revision, **kwargs))  # type: ignore[arg-type]
        return model if dtype in (None, "auto") else model.to(dtype)

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> None:
        """Write our format into `save_directory` (kept if it holds other files, e.g. a Trainer's).

        transformers' arguments (``state_dict``, ``safe_serialization``, ...) are accepted and
        unused: the weights written are this model's own.
        """
        if kwargs.get("is_main_process", True) is False:
            return
        target = Path(save_directory)
        target.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.save-", dir=target.parent))
        try:
            save_pretrained(self.model, tmp / "m")
            for f in (tmp / "m").iterdir():
                os.replace(f, target / f.name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def load_state_dict(self, state_dict: Mapping[str, Tensor], strict: bool = True, assign: bool = False) -> Any:
        """Our key names (a model.safetensors we wrote) are loaded checked; ``model.*`` ones as usual."""
        if any(k.startswith(f"{self.base_model_prefix}.") for k in state_dict):
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        load_state_dict_checked(self.model, dict(state_dict), source="state_dict")
        return LoadResult([], [])


class HyenaDNAForCausalLM(_Wrapper):
    """`hyenadna.HyenaDNAForCausalLM` as a transformers model: ``labels`` are input_ids, shifted here."""

    task = "causal_lm"

    def __init__(self, config: HyenaDNAConfig, model: _ours.HyenaDNAForCausalLM | None = None) -> None:
        super().__init__(config)
        self.model = model if model is not None else _ours.HyenaDNAForCausalLM(config.hyena_config())
        self.post_init()

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, labels: Tensor | None = None,
                output_hidden_states: bool | None = None, return_dict: bool | None = None) -> CausalLMOutput:
        """input_ids (B, L) -> logits (B, L, V); loss of predicting labels[:, t + 1] at t (-100 skipped).

        `attention_mask` is accepted for the collators and not used: the model is causal and has
        no mask, so pad on the left.
        """
        out = self.model(input_ids, output_hidden_states=bool(output_hidden_states))
        loss = None
        if labels is not None:
            shifted = F.pad(labels[:, 1:], (0, 1), value=-100).to(out.logits.device)
            loss = F.cross_entropy(out.logits.float().flatten(0, 1), shifted.flatten().long(), ignore_index=-100)
        return CausalLMOutput(loss=loss, logits=out.logits,
                              hidden_states=(out.hidden_states,) if output_hidden_states else None)


class HyenaDNAForSequenceClassification(_Wrapper):
    """`hyenadna.HyenaDNAForSequenceClassification` as a transformers model (config.num_labels labels)."""

    task = "classification"

    def __init__(self, config: HyenaDNAConfig, model: _ours.HyenaDNAForSequenceClassification | None = None) -> None:
        super().__init__(config)
        if model is None:
            head = config.head()
            model = _ours.HyenaDNAForSequenceClassification(config.hyena_config(), head["num_labels"],
                                                             pooling=head["pooling"], problem_type=head["problem_type"])
        self.model = model
        self.post_init()

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, labels: Tensor | None = None,
                output_hidden_states: bool | None = None, return_dict: bool | None = None) -> SequenceClassifierOutput:
        """input_ids (B, L), attention_mask (B, L) -> logits (B, C); loss as our head computes it."""
        out = self.model(input_ids, attention_mask=attention_mask, labels=labels,
                         output_hidden_states=bool(output_hidden_states))
        return SequenceClassifierOutput(loss=out.loss, logits=out.logits,
                                        hidden_states=(out.hidden_states,) if output_hidden_states else None)


AutoConfig.register(MODEL_TYPE, HyenaDNAConfig, exist_ok=True)
AutoModelForCausalLM.register(HyenaDNAConfig, HyenaDNAForCausalLM, exist_ok=True)
AutoModelForSequenceClassification.register(HyenaDNAConfig, HyenaDNAForSequenceClassification, exist_ok=True)
