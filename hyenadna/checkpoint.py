"""Checkpoint interop: the released HyenaDNA weights, our own format, Lightning checkpoints.

Layouts read by `load_pretrained` (detected from the files and the keys, never guessed from
names alone):

* **original release** (LongSafari/hyenadna-*-seqlen): ``config.json`` (``d_model``, ``layer.l_max``,
  ...) + ``weights.ckpt``, a PyTorch Lightning 1.8 checkpoint whose ``state_dict`` holds
  ``model.backbone.*`` with the positional buffers ``z``/``t``/``deltas``, ``freq`` listed three
  times, a tied ``model.lm_head.weight`` and torchmetrics counters. Gradient-checkpointed sizes
  (small-32k, medium-450k, large-1m) insert ``.layer`` after ``mixer`` and ``mlp``.
* **-hf release**: ``config.json`` (``max_seq_len``, ``activation_freq``, ...) + ``model.safetensors``
  or ``pytorch_model.bin``; keys ``hyena.backbone.*``, a separate ``lm_head.weight``, only
  ``implicit_filter.1.freq``.
* **ours**: ``config.json`` + ``model.safetensors`` + ``tokenizer.json`` + ``tokenizer_config.json``,
  written by `save_pretrained` in the Hugging Face formats their names promise: config.json is a
  flat ``PretrainedConfig`` dict (``model_type`` "hyenadna", ``architectures``, our `HyenaConfig`
  fields, ``"format": "hyenadna"``, ``format_version`` 2; a classifier adds ``num_labels``,
  ``pooling`` and the transformers ``problem_type``), the tokenizer files load in the
  ``tokenizers`` library and ``transformers.AutoTokenizer`` with our ids. No recomputable buffers,
  each shared tensor stored once. Format 1 (the config nested under ``config``, tokenizer.json
  holding only `CharTokenizer` settings) is still read.
* an official **finetuned** ``.ckpt``: its ``decoder.0.output_transform`` becomes our classifier
  head (mean pooling, the official default decoder mode, unless ``pooling=`` says otherwise).
* a **Lightning checkpoint** of our ``train.py`` / ``finetune.py`` (keys ``model.*``; the config is
  read from its ``hyena_config`` entry or its hyper-parameters; other trainable tensors such as a
  soft prompt are kept as extras), or a **single weights file** of any layout above (its config
  comes from a ``config.json`` beside it, else from the tensor shapes, l_max from the stored z).

A name that is no local file or folder is looked up on the Hugging Face Hub (`resolve_checkpoint`):
``owner/name`` as it is, a released short name (``hyenadna-tiny-1k-seqlen``, `RELEASED_MODELS`) as
its LongSafari ``-hf`` repository. Only the files read here are fetched, into the shared Hugging
Face cache; ``HF_HUB_OFFLINE=1`` reads that cache and never the network.

Every key and shape is accounted for: a mismatch raises one error listing the missing,
unexpected and wrongly-shaped keys. Stored ``z``/``t``/``deltas`` are compared with the ones
the config implies (a difference means the config is wrong) and then dropped.

A config that disagrees with the tensors (d_model, n_layer, d_inner, vocabulary rows, l_max
where z is stored, filter_order, emb_dim, ...) is refused before a model is built, naming the
file and each field with the config's value and what the weights say. That holds for the
config.json of a folder or beside a file (beside a file that carries its own config, such as a
Lightning checkpoint, only if it is a HyenaDNA config), a config inside the file, and
``config=``. Our config.json must moreover equal the copy stored in the safetensors metadata.

Safety: pickles are read with ``torch.load(weights_only=True)``. The hyper-parameters of the
original ``.ckpt`` files are omegaconf objects; they are rebuilt as inert stand-in classes
(no omegaconf code runs, omegaconf need not be installed) and anything else is refused.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import uuid
import warnings
import zipfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from hyenadna.config import HyenaConfig
from hyenadna.files import make_temporary_folder
from hyenadna.tokenizer import CharTokenizer

FORMAT_NAME = "hyenadna"
FORMAT_VERSION = 2  # 1: config nested under "config", tokenizer.json = CharTokenizer settings
MODEL_TYPE = "hyenadna"  # transformers' model_type (the LongSafari -hf configs use it too)
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
TOKENIZER_NAME = "tokenizer.json"
TOKENIZER_CONFIG_NAME = "tokenizer_config.json"
EXTRA_PREFIX = "extra."  # tensors outside the model (e.g. a soft prompt) kept by `convert`

Task = Literal["auto", "causal_lm", "classification"]

# --------------------------------------------------------------------------------------------
# Released weights on the Hugging Face Hub
# --------------------------------------------------------------------------------------------

# Short names of the released models -> their -hf repositories (safetensors, no optimizer state
# and no pickle, unlike the original repos' weights.ckpt, which load by their full id).
RELEASED_MODELS: dict[str, str] = {
    name: f"LongSafari/{name}-hf" for name in (
        "hyenadna-tiny-1k-seqlen", "hyenadna-tiny-1k-seqlen-d256", "hyenadna-tiny-16k-seqlen-d128",
        "hyenadna-small-32k-seqlen", "hyenadna-medium-160k-seqlen", "hyenadna-medium-450k-seqlen",
        "hyenadna-large-1m-seqlen")
}
# What `read_checkpoint` reads from a repository; pytorch_model.bin only where none of these is.
HUB_FILES = ("*.json", "model.safetensors", "weights.ckpt")
_HUB_FALLBACK_FILES = ("pytorch_model.bin",)
# owner/name as the Hub spells repository ids; a name ending in a weights suffix is a local path.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}")
_LOCAL_SUFFIXES = (".ckpt", ".safetensors", ".bin", ".pt", ".pth", ".json")

# --------------------------------------------------------------------------------------------
# Key table of the official checkpoints
# --------------------------------------------------------------------------------------------

# Per layer i, every key of the official state dict below ``backbone.layers.{i}.`` (after the
# ``model.``/``hyena.`` prefix and any ``.layer`` are removed), and what it is in our model:
#   "param"   -> loaded into the same name;
#   "buffer"  -> recomputable from the config (z, t, deltas): compared, then dropped;
#   "shared"  -> the one `freq` Parameter listed again under another index of the Sin module.
# The implicit-filter indices are those of num_inner_mlps=2 (every release); other depths are
# derived from the model in `_official_layer_table`.
OFFICIAL_LAYER_KEYS: dict[str, str] = {
    "mixer.in_proj.weight": "param",                           # (3D, D)
    "mixer.in_proj.bias": "param",                             # (3D,)
    "mixer.out_proj.weight": "param",                          # (D, D)
    "mixer.out_proj.bias": "param",                            # (D,)
    "mixer.short_filter.weight": "param",                      # (3D, 1, 3)
    "mixer.short_filter.bias": "param",                        # (3D,)
    "mixer.filter_fn.bias": "param",                           # (D,)
    "mixer.filter_fn.pos_emb.z": "buffer",                     # (1, l_max, 5)
    "mixer.filter_fn.pos_emb.t": "buffer",                     # (1, l_max, 1)
    "mixer.filter_fn.implicit_filter.0.weight": "param",       # (64, 5)
    "mixer.filter_fn.implicit_filter.0.bias": "param",         # (64,)
    "mixer.filter_fn.implicit_filter.1.freq": "param",         # (1, 64)
    "mixer.filter_fn.implicit_filter.2.weight": "param",       # (64, 64)
    "mixer.filter_fn.implicit_filter.2.bias": "param",         # (64,)
    "mixer.filter_fn.implicit_filter.3.freq": "shared",        # same tensor as .1.freq
    "mixer.filter_fn.implicit_filter.4.weight": "param",       # (64, 64)
    "mixer.filter_fn.implicit_filter.4.bias": "param",         # (64,)
    "mixer.filter_fn.implicit_filter.5.freq": "shared",        # same tensor as .1.freq
    "mixer.filter_fn.implicit_filter.6.weight": "param",       # (D, 64), no bias
    "mixer.filter_fn.modulation.deltas": "buffer",             # (1, 1, D)
    "norm1.weight": "param", "norm1.bias": "param",            # (D,)
    "mlp.fc1.weight": "param", "mlp.fc1.bias": "param",        # (I, D), (I,)
    "mlp.fc2.weight": "param", "mlp.fc2.bias": "param",        # (D, I), (D,)
    "norm2.weight": "param", "norm2.bias": "param",            # (D,)
}  # fmt: skip
OFFICIAL_TOP_KEYS: dict[str, str] = {
    "backbone.embeddings.word_embeddings.weight": "param",     # (16, D)
    "backbone.ln_f.weight": "param", "backbone.ln_f.bias": "param",
    "lm_head.weight": "shared",                                # tied to the embedding
}  # fmt: skip
# Gradient-checkpointed official models wrap mixer/mlp in a module stored as attribute `layer`.
_LAYER_WRAPPER = re.compile(r"\.(mixer|mlp)\.layer\.")
# Buffers that are functions of the config; tolerance covers CPU/GPU fp32 rounding of cos/sin.
_BUFFER_ATOL = 1e-4

# --------------------------------------------------------------------------------------------
# Config translation
# --------------------------------------------------------------------------------------------

# Original config.json: top-level fields and the `layer` (HyenaOperator) fields. Fields that
# only steer training or fused kernels (same math, same names) are accepted and ignored.
_ORIGINAL_TOP = {"d_model", "n_layer", "d_inner", "vocab_size", "resid_dropout", "embed_dropout",
                 "fused_mlp", "fused_dropout_add_ln", "checkpoint_mixer", "checkpoint_mlp",
                 "residual_in_fp32", "pad_vocab_size_multiple", "return_hidden_state",
                 "model_type", "layer", "layer_norm_epsilon"}
# `d_model` may repeat the top-level one: the official standalone model fills it in when absent
# ("HF code differs from main Safari code") and gives the operator the layer's value.
_ORIGINAL_LAYER = {"_name_", "emb_dim", "filter_order", "local_order", "short_filter_order", "l_max",
                   "modulate", "w", "lr", "wd", "lr_pos_emb", "order", "num_inner_mlps",
                   "filter_dropout", "dropout", "shift", "d_model"}
# `layer` fields that map onto ours. `local_order` is swallowed by the official operator's
# **kwargs: the short filter is 3 unless `short_filter_order` is given, so it is not mapped.
_ORIGINAL_LAYER_RENAMES = {"l_max": "l_max", "emb_dim": "emb_dim", "filter_order": "filter_order",
                           "short_filter_order": "short_filter_order", "modulate": "modulate",
                           "w": "activation_freq", "order": "hyena_order", "num_inner_mlps": "num_inner_mlps",
                           "dropout": "hyena_dropout", "shift": "shift"}
# -hf config.json fields; the transformers bookkeeping fields carry no architecture.
_HF_FIELDS = {"d_model": "d_model", "n_layer": "n_layer", "d_inner": "d_inner", "vocab_size": "vocab_size",
              "max_seq_len": "l_max", "emb_dim": "emb_dim", "filter_order": "filter_order",
              "short_filter_order": "short_filter_order", "hyena_order": "hyena_order",
              "num_inner_mlps": "num_inner_mlps", "activation_freq": "activation_freq",
              "train_freq": "train_freq", "embed_dropout": "embed_dropout",
              "hyena_dropout": "hyena_dropout", "layer_norm_epsilon": "layer_norm_epsilon",
              "initializer_range": "initializer_range",
              "pad_vocab_size_multiple": "pad_vocab_size_multiple", "pad_token_id": "pad_token_id"}
_HF_IGNORED = {"use_bias", "hyena_filter_dropout", "tie_word_embeddings", "model_type", "architectures",
               "auto_map", "torch_dtype", "transformers_version", "_name_or_path", "return_dict",
               "use_cache", "bos_token_id", "eos_token_id", "sep_token_id", "num_labels",
               "id2label", "label2id", "problem_type"}
# Fields a caller may override at load time; the rest define shapes or the filters (l_max).
_ARCH_FIELDS = {"d_model", "n_layer", "d_inner", "l_max", "vocab_size", "pad_vocab_size_multiple",
                "hyena_order", "short_filter_order", "emb_dim", "filter_order", "num_inner_mlps",
                "train_freq"}


def config_from_original(d: dict[str, Any], where: str = "config.json") -> HyenaConfig:
    """HyenaConfig from an original-release config.json (top level + ``layer``)."""
    unknown = sorted(set(d) - _ORIGINAL_TOP)
    layer = d.get("layer")
    if not isinstance(layer, dict):
        raise ValueError(f"{where}: original HyenaDNA config needs a 'layer' object with l_max etc.")
    unknown += [f"layer.{k}" for k in sorted(set(layer) - _ORIGINAL_LAYER)]
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown} in an original HyenaDNA config; "
                         f"known: {sorted(_ORIGINAL_TOP)} and layer.{sorted(_ORIGINAL_LAYER)}")
    if layer.get("_name_", "hyena") != "hyena":
        raise ValueError(f"{where}: layer._name_ is {layer['_name_']!r}; only 'hyena' models are supported")
    for name in ("d_model", "n_layer"):
        if name not in d:
            raise ValueError(f"{where}: required field {name!r} is missing")
    if "l_max" not in layer:
        raise ValueError(f"{where}: required field 'layer.l_max' is missing")
    if "d_model" in layer and layer["d_model"] != d["d_model"]:
        raise ValueError(f"{where}: layer.d_model is {layer['d_model']!r} but d_model is {d['d_model']!r}; "
                         "the operator and the rest of the model must have the same width")
    out: dict[str, Any] = {k: d[k] for k in ("d_model", "n_layer", "d_inner", "vocab_size",
                                             "pad_vocab_size_multiple", "resid_dropout",
                                             "embed_dropout", "residual_in_fp32",
                                             "layer_norm_epsilon") if k in d}
    out.update({ours: layer[theirs] for theirs, ours in _ORIGINAL_LAYER_RENAMES.items() if theirs in layer})
    return _make_config(out, where)


def config_from_hf(d: dict[str, Any], where: str = "config.json") -> HyenaConfig:
    """HyenaConfig from a LongSafari ``-hf`` config.json."""
    unknown = sorted(set(d) - set(_HF_FIELDS) - _HF_IGNORED)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown} in a HyenaDNA -hf config; "
                         f"known: {sorted(set(_HF_FIELDS) | _HF_IGNORED)}")
    if d.get("use_bias", True) is not True:
        raise ValueError(f"{where}: use_bias={d['use_bias']!r}; the HyenaDNA filter always has its skip bias")
    for name in ("d_model", "n_layer", "max_seq_len"):
        if name not in d:
            raise ValueError(f"{where}: required field {name!r} is missing")
    return _make_config({ours: d[theirs] for theirs, ours in _HF_FIELDS.items() if theirs in d}, where)


def config_to_original(config: HyenaConfig, layer_wrapped: bool = False) -> dict[str, Any]:
    """Original-release config.json for `config` (for exporting in the official layout)."""
    out: dict[str, Any] = {
        "d_model": config.d_model, "n_layer": config.n_layer, "d_inner": config.d_inner,
        "vocab_size": config.vocab_size, "resid_dropout": config.resid_dropout,
        "embed_dropout": config.embed_dropout, "fused_mlp": False, "fused_dropout_add_ln": True,
        "residual_in_fp32": config.residual_in_fp32,
        "pad_vocab_size_multiple": config.pad_vocab_size_multiple, "return_hidden_state": True,
        "layer": {"_name_": "hyena", "emb_dim": config.emb_dim, "filter_order": config.filter_order,
                  "local_order": config.short_filter_order, "l_max": config.l_max,
                  "modulate": config.modulate, "w": config.activation_freq, "lr": 6e-4, "wd": 0.0,
                  "lr_pos_emb": 0.0},
    }
    if layer_wrapped:
        out["checkpoint_mixer"] = out["checkpoint_mlp"] = True
    return out


def config_to_hf(config: HyenaConfig) -> dict[str, Any]:
    """-hf config.json for `config`."""
    out = {theirs: getattr(config, ours) for theirs, ours in _HF_FIELDS.items()}
    out.update(use_bias=True, hyena_filter_dropout=0.0, tie_word_embeddings=False, model_type="hyenadna")
    return out


# Where each of our fields sits in a config.json of each layout, to name it in errors
# (top-level original fields keep our names).
_JSON_FIELD_NAMES: dict[str, dict[str, str]] = {
    "original": {ours: f"layer.{theirs}" for theirs, ours in _ORIGINAL_LAYER_RENAMES.items()},
    "hf": {ours: theirs for theirs, ours in _HF_FIELDS.items()},
    "ours": {f.name: f.name for f in fields(HyenaConfig)},
}

# Our problem types under transformers' names (PretrainedConfig.problem_type).
_HF_PROBLEM_TYPES = {"single_label": "single_label_classification",
                     "multi_label": "multi_label_classification", "regression": "regression"}
_HEAD_FIELDS = {"num_labels", "pooling", "problem_type", "id2label", "label2id"}
_FORMAT_FIELDS = {"format", "format_version", "model_type", "architectures", "tie_word_embeddings"}
# What transformers adds when it writes a config.json itself (PretrainedConfig.save_pretrained).
_TRANSFORMERS_FIELDS = {"transformers_version", "dtype", "torch_dtype", "_name_or_path", "return_dict",
                        "output_hidden_states", "output_attentions", "use_cache", "bos_token_id",
                        "eos_token_id", "sep_token_id", "chunk_size_feed_forward", "is_encoder_decoder"}


def config_to_json(config: HyenaConfig, architecture: str, head: dict[str, Any] | None = None) -> dict[str, Any]:
    """Our config.json: a flat PretrainedConfig dict (see the module docstring); `head` for a classifier."""
    out: dict[str, Any] = {"model_type": MODEL_TYPE, "architectures": [architecture], "format": FORMAT_NAME,
                           "format_version": FORMAT_VERSION, **config.to_dict(),
                           "tie_word_embeddings": head is None}  # the LM head is the embedding
    if head is not None:
        out.update(num_labels=head["num_labels"], pooling=head["pooling"],
                   problem_type=_HF_PROBLEM_TYPES[head["problem_type"]])
    return out


def config_from_json(d: dict[str, Any], where: str = "config.json") -> tuple[HyenaConfig, dict[str, Any] | None]:
    """(config, classifier head or None) of our config.json, format 2 or 1."""
    if d.get("format") != FORMAT_NAME:
        raise ValueError(f"{where}: not a hyenadna config.json (no \"format\": \"hyenadna\")")
    version = d.get("format_version")
    if not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise ValueError(f"{where}: format_version {version!r} is not one this package reads (1..{FORMAT_VERSION})")
    if version == 1:
        return _make_config(d.get("config", {}), where), d.get("head")
    names = {f.name for f in fields(HyenaConfig)}
    known = names | _HEAD_FIELDS | _FORMAT_FIELDS
    if "transformers_version" in d:  # written by transformers, which adds its bookkeeping
        known |= _TRANSFORMERS_FIELDS
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown} in a hyenadna config; known: {sorted(known)}")
    config = _make_config({k: v for k, v in d.items() if k in names}, where)
    head = None
    if "pooling" in d:
        n = d.get("num_labels", len(d.get("id2label") or {}))
        problem = {v: k for k, v in _HF_PROBLEM_TYPES.items()}.get(d.get("problem_type"), d.get("problem_type"))
        if problem not in _HF_PROBLEM_TYPES:
            raise ValueError(f"{where}: problem_type {d.get('problem_type')!r} is not one of "
                             f"{sorted(_HF_PROBLEM_TYPES.values())}")
        head = {"num_labels": n, "pooling": d["pooling"], "problem_type": problem}
    return config, head


def _make_config(d: dict[str, Any], where: str) -> HyenaConfig:
    try:
        return HyenaConfig.from_dict(d)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: {err}") from None


# --------------------------------------------------------------------------------------------
# Safe unpickling
# --------------------------------------------------------------------------------------------


class _Inert:
    """Stand-in for a pickled class: holds the pickled state as attributes, runs no code."""

    def __repr__(self) -> str:
        return f"<{type(self).__qualname__} stand-in>"


def _plain_dict(*_: Any) -> dict:
    # collections.defaultdict(factory) rebuilt as a plain dict: the factory is never called,
    # and the weights-only unpickler can fill plain dicts only.
    return {}


# Globals the original .ckpt files (Lightning 1.8 + Hydra/omegaconf hyper-parameters) need,
# plus our own HyenaConfig inside hyper-parameters. All map to inert stand-ins.
_STANDIN_GLOBALS = (
    "omegaconf.dictconfig.DictConfig", "omegaconf.listconfig.ListConfig",
    "omegaconf.nodes.AnyNode", "omegaconf.nodes.StringNode", "omegaconf.nodes.IntegerNode",
    "omegaconf.nodes.FloatNode", "omegaconf.nodes.BooleanNode", "omegaconf.nodes.BytesNode",
    "omegaconf.nodes.PathNode", "omegaconf.base.Metadata", "omegaconf.base.ContainerMetadata",
    "typing.Any", "hyenadna.model.HyenaConfig", "hyenadna.config.HyenaConfig",
)
_STANDINS: dict[str, type] = {
    name: type(name.rsplit(".", 1)[1], (_Inert,), {"__module__": __name__}) for name in _STANDIN_GLOBALS
}
# Plain types appear as values in omegaconf metadata (object_type=dict, ...); calling them is harmless.
_SAFE_GLOBALS: list[Any] = [(cls, name) for name, cls in _STANDINS.items()] + [
    (_plain_dict, "collections.defaultdict"), dict, list, tuple, set, int, float, str, bool,
]


class UnsafeCheckpointError(ValueError):
    """The file needs code execution (a pickled global outside the allow-list) to load."""


def _plain(obj: Any) -> Any:
    """Turn unpickled omegaconf/HyenaConfig stand-ins into plain dicts/lists/values."""
    if isinstance(obj, _Inert):
        name = type(obj).__name__
        state = vars(obj)
        if name in ("DictConfig", "ListConfig"):
            return _plain(state.get("_content"))
        if name.endswith("Node"):
            return _plain(state.get("_val"))
        if name == "HyenaConfig":
            return {k: _plain(v) for k, v in state.items()}
        return None  # omegaconf metadata / typing.Any: no user data
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def safe_torch_load(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """`torch.load(weights_only=True)` with only the omegaconf hyper-parameter classes allowed.

    Raises `UnsafeCheckpointError` naming the refused global for anything that would need
    code execution, and ValueError for truncated or corrupt files.
    """
    path = Path(path)
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            # mmap: a release .ckpt is mostly optimizer state we never need in memory at once
            return torch.load(path, map_location=map_location, weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as err:
        text = str(err)
        found = re.search(r"(Unsupported global: GLOBAL [^\s]+|Unsupported operand \d+|"
                          r"Can only [^\n]+|Trying to [^\n]+)", text)
        detail = found.group(1) if found else text.strip().splitlines()[-1]
        if re.search(r"Unsupported global|Can only|Trying to", text):
            raise UnsafeCheckpointError(
                f"{path}: refusing to load: the pickle needs something other than tensors and "
                f"omegaconf hyper-parameters ({detail}). Loading it would run code from the file; "
                "only checkpoints from HyenaDNA / this package are supported") from None
        raise ValueError(f"{path}: not a readable PyTorch checkpoint (truncated or corrupt?): {detail}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        if isinstance(err, FileNotFoundError):
            raise
        raise ValueError(f"{path}: not a readable PyTorch checkpoint (truncated or corrupt?): "
                         f"{str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__}") from None


def _load_safetensors(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            return {k: f.get_tensor(k) for k in f.keys()}, metadata
    except Exception as err:  # SafetensorError and OS errors: one clear message naming the file
        if isinstance(err, FileNotFoundError):
            raise
        raise ValueError(f"{path}: not a readable safetensors file (truncated or corrupt?): {err}") from None


def _read_weights_file(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(tensors, side info) of one weights file; side info holds metadata / hyper-parameters."""
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    with open(path, "rb") as f:
        head = f.read(16)
    if len(head) < 8:
        raise ValueError(f"{path}: file is empty or truncated ({len(head)} bytes)")
    n = int.from_bytes(head[:8], "little")
    if path.suffix == ".safetensors" or (head[8:9] == b"{" and 0 < n < 100_000_000):
        tensors, metadata = _load_safetensors(path)
        return tensors, {"kind": "safetensors", "metadata": metadata}
    obj = safe_torch_load(path)
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a dict of tensors or a Lightning checkpoint, got {type(obj).__name__}")
    if "state_dict" in obj:
        sd = obj["state_dict"]
        info = {"kind": "lightning", "hyper_parameters": _plain(obj.get("hyper_parameters")),
                "hyena_config": obj.get("hyena_config")}  # what hyenadna.lm stores beside the weights
    else:
        sd, info = obj, {"kind": "state_dict"}
    bad = [k for k, v in sd.items() if not isinstance(v, Tensor)]
    if bad:
        raise ValueError(f"{path}: state_dict entries that are not tensors: {bad[:10]}")
    return dict(sd), info


# --------------------------------------------------------------------------------------------
# Reading a checkpoint of any layout
# --------------------------------------------------------------------------------------------


@dataclass
class Checkpoint:
    """A checkpoint read from disk: config, tensors under our key names, and where they came from."""

    config: HyenaConfig
    state_dict: dict[str, Tensor]  # our key names; official buffers/aliases still present
    layout: str  # "original", "hf", "ours", "lightning", "state_dict"
    source: Path
    head: dict[str, Any] | None = None  # num_labels / pooling / problem_type of a classifier
    tokenizer: CharTokenizer | None = None
    extras: dict[str, Tensor] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def hub_repo_id(name: str) -> str | None:
    """The Hub repository `name` stands for: a released short name's, ``owner/name`` itself, else None."""
    if name in RELEASED_MODELS:
        return RELEASED_MODELS[name]
    if _HUB_ID.fullmatch(name) and not name.endswith(_LOCAL_SUFFIXES) and ".." not in name:
        return name
    return None


def _hub_offline() -> bool:
    from huggingface_hub import constants

    # read now, not at import: HF_HUB_OFFLINE set by the caller after huggingface_hub was imported counts too
    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}


def resolve_checkpoint(path: str | Path, revision: str | None = None) -> Path:
    """The local file or folder `path` names: itself if it exists, else a Hub snapshot in the HF cache.

    A Hub id (``owner/name``) or released short name (`RELEASED_MODELS`) is fetched with
    `huggingface_hub.snapshot_download` at `revision` (branch, tag or commit; default main),
    only `HUB_FILES`; offline (``HF_HUB_OFFLINE=1``, or no network) the cached snapshot is used,
    and a missing one is a one-line FileNotFoundError saying how to fetch it.
    """
    p = Path(path)
    if p.exists():
        if revision is not None:
            raise ValueError(f"revision={revision!r} is for a Hugging Face Hub id, but {path} is a local "
                             "file or folder")
        return p
    repo_id = hub_repo_id(str(path))
    if repo_id is None:
        raise FileNotFoundError(f"checkpoint not found: {path} (no such file or folder, and not a Hugging Face "
                                f"Hub id owner/name or a released name such as {next(iter(RELEASED_MODELS))})")
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    rev = revision or "main"
    offline = _hub_offline()
    try:
        folder = Path(snapshot_download(repo_id, revision=rev, allow_patterns=list(HUB_FILES),
                                        local_files_only=offline))
        if not any((folder / n).is_file() for n in (WEIGHTS_NAME, "weights.ckpt")):
            folder = Path(snapshot_download(repo_id, revision=rev, allow_patterns=list(_HUB_FALLBACK_FILES),
                                            local_files_only=offline))
    except RevisionNotFoundError:
        raise ValueError(f"{path}: the Hugging Face Hub repository {repo_id} has no revision {rev!r}") from None
    except RepositoryNotFoundError:  # also a gated or private repository without a token
        raise FileNotFoundError(f"checkpoint not found: {path} is no local file or folder, and the Hugging Face "
                                f"Hub has no public model {repo_id} (a private or gated one needs HF_TOKEN)") from None
    except LocalEntryNotFoundError:
        fetch = f"hf download {repo_id}" + (f" --revision {rev}" if revision else "")
        why = "HF_HUB_OFFLINE is set" if offline else "the Hub cannot be reached"
        raise FileNotFoundError(f"checkpoint not found: {path} is no local file or folder, and the Hugging Face "
                                f"Hub model {repo_id} (revision {rev}) is not in the HF cache while {why}; fetch "
                                f"it where there is network with `{fetch}` (same HF_HUB_CACHE), or pass a local "
                                "folder") from None
    return folder


def read_checkpoint(path: str | Path, config: HyenaConfig | None = None, revision: str | None = None) -> Checkpoint:
    """Read any supported layout (see the module docstring) without building a model.

    `path` is a local file or folder, else a Hugging Face Hub id or released name fetched at
    `revision` (`resolve_checkpoint`).
    """
    local = resolve_checkpoint(path, revision)
    ckpt = _read_dir(local, config) if local.is_dir() else _read_file(local, config, local.parent / CONFIG_NAME)
    if local != Path(path):
        ckpt.notes.insert(0, f"{path}: Hugging Face Hub {hub_repo_id(str(path))} at revision "
                             f"{revision or 'main'}, cached in {local}")
    return ckpt


def _read_json(path: Path) -> dict[str, Any]:
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: invalid JSON ({err})") from None
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(d).__name__}")
    return d


def _json_layout(d: dict[str, Any]) -> str | None:
    """Which kind of HyenaDNA config.json `d` is ("ours", "original", "hf"), None for none."""
    if d.get("format") == FORMAT_NAME:
        return "ours"
    if "layer" in d:
        return "original"
    if "max_seq_len" in d:
        return "hf"
    return None


def _config_from_json(d: dict[str, Any], where: str) -> tuple[HyenaConfig, str]:
    """(config, layout) for a config.json of any of the three kinds."""
    layout = _json_layout(d)
    if layout == "ours":
        return config_from_json(d, where)[0], layout
    if layout == "original":
        return config_from_original(d, where), layout
    if layout == "hf":
        return config_from_hf(d, where), layout
    raise ValueError(f"{where}: not a HyenaDNA config: expected ours (\"format\": \"hyenadna\"), an "
                     "original release (with a 'layer' object) or a -hf release (with 'max_seq_len')")


def _read_dir(path: Path, config: HyenaConfig | None) -> Checkpoint:
    cfg_path = path / CONFIG_NAME
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{path}: no {CONFIG_NAME}; a HyenaDNA checkpoint directory holds "
                                f"{CONFIG_NAME} plus weights.ckpt, model.safetensors or pytorch_model.bin")
    d = _read_json(cfg_path)
    _, layout = _config_from_json(d, str(cfg_path))
    candidates = {"original": ["weights.ckpt"], "hf": [WEIGHTS_NAME, "pytorch_model.bin"],
                  "ours": [WEIGHTS_NAME]}[layout]
    for name in candidates:
        if (path / name).is_file():
            return _read_file(path / name, config, cfg_path)
    raise FileNotFoundError(f"{path}: config.json is a {layout} HyenaDNA config but none of "
                            f"{candidates} is there")


def _read_file(path: Path, config: HyenaConfig | None, cfg_path: Path) -> Checkpoint:
    tensors, info = _read_weights_file(path)
    notes: list[str] = []
    meta = info.get("metadata", {})
    if meta.get("format") == FORMAT_NAME:
        return _read_ours(path, tensors, meta, config, cfg_path)
    # Official layouts: strip the prefix, remove `.layer`, drop torchmetrics counters.
    dropped = [k for k in tensors if "torchmetrics" in k]
    if dropped:
        notes.append(f"dropped {len(dropped)} torchmetrics counter(s)")
    sd = {k: v for k, v in tensors.items() if "torchmetrics" not in k}
    extras: dict[str, Tensor] = {}
    if any(k.startswith("hyena.") for k in sd):
        layout = "hf"
        sd = {(k[len("hyena."):] if k.startswith("hyena.") else k): v for k, v in sd.items()}
        if "score.weight" in sd:
            # -hf sequence classifier: a bias-free Linear on the last real token = our head, bias 0
            sd["head.weight"] = sd.pop("score.weight")
            sd["head.bias"] = torch.zeros(sd["head.weight"].shape[0], dtype=sd["head.weight"].dtype)
            notes.append("-hf 'score' classifier loaded as the head (last-token pooling, zero bias)")
    elif any(k.startswith("model.") for k in sd):
        layout = "original" if any(k.endswith("pos_emb.z") for k in sd) else "lightning"
        extras = {k: v for k, v in sd.items() if not k.startswith("model.")}
        sd = {k[len("model."):]: v for k, v in sd.items() if k.startswith("model.")}
        if layout == "original" and extras:
            extras = _official_decoder(extras, sd, path, notes)
    else:
        layout = "state_dict"
    wrapped = [k for k in sd if _LAYER_WRAPPER.search(k)]
    if wrapped:
        notes.append(f"removed '.layer' (gradient-checkpointing wrapper) from {len(wrapped)} keys")
        renamed: dict[str, Tensor] = {}
        for k, v in sd.items():
            new = _LAYER_WRAPPER.sub(r".\1.", k)
            if new in renamed:
                raise ValueError(f"{path}: key {new!r} appears both with and without '.layer'")
            renamed[new] = v
        sd = renamed

    head = None
    # Every config that describes these weights, checked against them: (config, where, field names).
    checks: list[tuple[HyenaConfig, str, dict[str, str]]] = []
    if config is not None:
        checks.append((config, "the config= argument", {}))
    else:
        hparams = info.get("hyper_parameters")
        if layout == "lightning" and isinstance(info.get("hyena_config"), dict):
            config = _make_config(info["hyena_config"], f"{path} hyena_config")
            checks.append((config, f"{path} hyena_config", {}))
            if hparams is not None:
                head = _config_from_hparams(hparams, path)[1]
        elif layout == "lightning" and hparams is not None:
            config, head = _config_from_hparams(hparams, path)
            if config is not None:
                checks.append((config, f"{path} hyper_parameters", {}))
        beside = _config_beside(cfg_path, needed=config is None)
        if beside is not None:
            json_config, json_layout, _ = beside
            checks.append((json_config, str(cfg_path), _JSON_FIELD_NAMES[json_layout]))
            if config is None:
                config = json_config
                notes.append(f"config from {cfg_path} ({json_layout} layout)")
        if config is None:
            config = _infer_config(sd, path)
            notes.append("config inferred from tensor shapes (no config.json beside the file)")
    for cfg, where, names in checks:
        _check_config(cfg, sd, where, path, names)
    if "head.weight" in sd:
        default_pool = "mean" if layout == "original" else "last"
        head = {"pooling": default_pool, "problem_type": "single_label", **(head or {}),
                "num_labels": int(sd["head.weight"].shape[0])}
    return Checkpoint(config, sd, layout, path, head=head, extras=extras, notes=notes)


_OFFICIAL_DECODER = {"decoder.0.output_transform.weight": "head.weight",
                     "decoder.0.output_transform.bias": "head.bias"}


def _official_decoder(extras: dict[str, Tensor], sd: dict[str, Tensor], path: Path,
                      notes: list[str]) -> dict[str, Tensor]:
    """Move an official finetuning decoder (SequenceDecoder.output_transform) into `sd` as our head."""
    unknown = sorted(set(extras) - set(_OFFICIAL_DECODER))
    if unknown:
        raise ValueError(f"{path}: unexpected keys outside 'model.': {_fmt(unknown)}")
    for theirs, ours in _OFFICIAL_DECODER.items():
        if theirs in extras:
            sd[ours] = extras[theirs]
    # The official default decoder mode is 'pool' (mean over all positions); the checkpoint does
    # not record the mode, so mean it is unless the caller passes pooling=.
    notes.append("official finetuning decoder loaded as the classification head (pooling 'mean', "
                 "the official default 'pool' mode; pass pooling= if it was trained with another)")
    return {}


def _config_beside(cfg_path: Path, needed: bool) -> tuple[HyenaConfig, str, dict[str, Any]] | None:
    """(config, layout, JSON) of the config.json beside a weights file, None where there is none.

    A config.json that is no HyenaDNA config is an error when the weights need it (`needed`);
    beside a file that carries its own config it is not ours to judge and is skipped.
    """
    if not cfg_path.is_file():
        return None
    d = _read_json(cfg_path)
    if not needed and _json_layout(d) is None:
        return None
    config, layout = _config_from_json(d, str(cfg_path))
    return config, layout, d


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one dict with dotted keys."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


_ABSENT = object()


def _differences(d: dict[str, Any], other: dict[str, Any], other_name: str) -> dict[str, str]:
    """Dotted key -> how `d` and `other` differ there, for every key where they do."""
    a, b = _flatten(d), _flatten(other)
    return {key: f"{key} = {a.get(key, 'absent')!r} but {other_name} says {b.get(key, 'absent')!r}"
            for key in sorted(set(a) | set(b)) if a.get(key, _ABSENT) != b.get(key, _ABSENT)}


def _read_ours(path: Path, tensors: dict[str, Tensor], meta: dict[str, str],
               config: HyenaConfig | None, cfg_path: Path) -> Checkpoint:
    try:
        version = int(meta.get("format_version", "0"))
        d = json.loads(meta["config"])
    except (KeyError, ValueError) as err:
        raise ValueError(f"{path}: damaged hyenadna metadata in the safetensors header ({err})") from None
    if version > FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {version} is newer than this package reads ({FORMAT_VERSION})")
    stored_config, stored_head = config_from_json(d, f"{path} metadata")
    extras = {k[len(EXTRA_PREFIX):]: v for k, v in tensors.items() if k.startswith(EXTRA_PREFIX)}
    sd = {k: v for k, v in tensors.items() if not k.startswith(EXTRA_PREFIX)}
    if config is not None:
        _check_config(config, sd, "the config= argument", path)
    else:
        config = stored_config
        _check_config(config, sd, f"{path} metadata", path, _JSON_FIELD_NAMES["ours"])
        beside = _config_beside(cfg_path, needed=False)
        if beside is not None:
            json_config, layout, raw = beside
            names = _JSON_FIELD_NAMES[layout]
            problems = {names.get(k, k): v for k, v in _config_mismatches(json_config, sd, names).items()}
            if layout == "ours":  # our config.json is a copy of the stored config: all of it must agree
                problems = {**_differences(raw, d, f"the config stored in {path.name}"), **problems}
            if problems:
                raise ValueError(f"{cfg_path} disagrees with {path}: "
                                 + "; ".join(problems[k] for k in sorted(problems)))
    return Checkpoint(config, sd, "ours", path, head=stored_head, tokenizer=read_tokenizer(path.parent),
                      extras=extras)


def read_tokenizer(folder: Path) -> CharTokenizer | None:
    """The CharTokenizer saved in `folder` (tokenizer_config.json, or a format-1 tokenizer.json); None if none."""
    cfg_path = folder / TOKENIZER_CONFIG_NAME
    if cfg_path.is_file():
        tok = CharTokenizer.from_hf_config(_read_json(cfg_path))
        if tok is not None:
            return tok
    tok_path = folder / TOKENIZER_NAME
    if tok_path.is_file():
        d = _read_json(tok_path)
        if "model" not in d:  # format 1: only the CharTokenizer settings
            try:
                return CharTokenizer.from_dict(d)
            except ValueError as err:
                raise ValueError(f"{tok_path}: {err}") from None
    return None


_HYDRA_META = {"_target_", "_partial_", "_recursive_", "_convert_"}


def _config_from_hparams(hparams: Any, path: Path) -> tuple[HyenaConfig | None, dict[str, Any] | None]:
    """The HyenaConfig (and classifier head settings) stored in Lightning hyper-parameters."""
    names = {f.name for f in fields(HyenaConfig)}
    found: list[dict[str, Any]] = []
    head: dict[str, Any] = {}

    def walk(obj: Any) -> None:
        if isinstance(obj, dict):
            keys = set(obj) - _HYDRA_META
            if {"d_model", "n_layer", "l_max"} <= keys and keys <= names:
                found.append({k: obj[k] for k in keys})
                return
            for k in ("pooling", "problem_type"):
                if isinstance(obj.get(k), str):
                    head.setdefault(k, obj[k])
            for v in obj.values():
                walk(v)
        elif isinstance(obj, list):
            for v in obj:
                walk(v)

    walk(hparams)
    if not found:
        return None, head or None
    if any(f != found[0] for f in found[1:]):
        raise ValueError(f"{path}: hyper-parameters hold {len(found)} different model configs; pass config=")
    return _make_config(found[0], f"{path} hyper_parameters"), head or None


_EMBEDDING = "backbone.embeddings.word_embeddings.weight"
_MIXER0 = "backbone.layers.0.mixer."


def _weights_architecture(sd: dict[str, Tensor]) -> dict[str, tuple[int, str]]:
    """The architecture fields the tensors fix, each as (value, the tensor that says so).

    Per-layer fields come from layer 0 (`load_state_dict_checked` compares every layer's shapes
    later); a field whose tensor is absent or has too few dimensions is left out (that is
    reported later as a missing or wrongly shaped key). ``padded_vocab_size`` is the row count.
    """
    out: dict[str, tuple[int, str]] = {}

    def put(name: str, key: str, dim: int) -> None:
        t = sd.get(key)
        if t is not None and -t.dim() <= dim < t.dim():
            out[name] = (int(t.shape[dim]), f"{key} is {tuple(t.shape)}")

    put("d_model", _EMBEDDING, 1)
    put("padded_vocab_size", _EMBEDDING, 0)
    layers = sorted({int(m.group(1)) for k in sd if (m := re.match(r"backbone\.layers\.(\d+)\.", k))})
    if layers:
        out["n_layer"] = (layers[-1] + 1, f"layers {layers[0]}..{layers[-1]} are stored")
    put("d_inner", "backbone.layers.0.mlp.fc1.weight", 0)
    put("l_max", _MIXER0 + "filter_fn.pos_emb.z", 1)
    put("filter_order", _MIXER0 + "filter_fn.implicit_filter.0.weight", 0)
    put("emb_dim", _MIXER0 + "filter_fn.implicit_filter.0.weight", 1)
    put("short_filter_order", _MIXER0 + "short_filter.weight", -1)
    mlp = _MIXER0 + "filter_fn.implicit_filter"
    linears = [k for k in sd if re.fullmatch(re.escape(mlp) + r"\.\d+\.weight", k)]
    if linears:  # input and output Linear plus the inner ones
        out["num_inner_mlps"] = (len(linears) - 2, f"{mlp} has {len(linears)} Linear layers")
    proj = sd.get(_MIXER0 + "in_proj.weight")
    if proj is not None and proj.dim() == 2 and proj.shape[1] > 0 and proj.shape[0] % proj.shape[1] == 0:
        # in_proj gives order + 1 streams of d_model channels
        out["hyena_order"] = (proj.shape[0] // proj.shape[1] - 1, f"{_MIXER0}in_proj.weight is {tuple(proj.shape)}")
    return out


def _config_mismatches(config: HyenaConfig, sd: dict[str, Tensor], names: dict[str, str]) -> dict[str, str]:
    """Our field -> how `config` and the tensors disagree on it (the field named as `names` says)."""
    out: dict[str, str] = {}
    for name, (value, evidence) in _weights_architecture(sd).items():
        if name == "padded_vocab_size":
            if config.padded_vocab_size != value:
                out["vocab_size"] = (f"{names.get('vocab_size', 'vocab_size')} = {config.vocab_size} "
                                     f"({config.padded_vocab_size} embedding rows at pad_vocab_size_multiple "
                                     f"{config.pad_vocab_size_multiple}) but the weights have {value} rows "
                                     f"({evidence})")
        elif getattr(config, name) != value:
            out[name] = f"{names.get(name, name)} = {getattr(config, name)!r} but the weights say {value} ({evidence})"
    return out


def _check_config(config: HyenaConfig, sd: dict[str, Tensor], where: str, weights: Path,
                  names: dict[str, str] | None = None) -> None:
    """Raise naming `where` and every architecture field on which `config` and the tensors disagree."""
    problems = _config_mismatches(config, sd, names or {})
    if problems:
        raise ValueError(f"{where} disagrees with {weights}: " + "; ".join(problems.values()))


def _infer_config(sd: dict[str, Tensor], path: Path) -> HyenaConfig:
    """Architecture from the tensor shapes of an official state dict (l_max from the stored z)."""
    arch = {name: value for name, (value, _) in _weights_architecture(sd).items()}
    for name, key in (("d_model", _EMBEDDING), ("l_max", _MIXER0 + "filter_fn.pos_emb.z")):
        if name not in arch:
            raise ValueError(f"{path}: cannot infer the config: key {key!r} is missing and there is no "
                             f"{CONFIG_NAME} beside the file; pass config= or add the config.json")
    rows = arch.pop("padded_vocab_size")
    # the released vocabulary (12) padded to 16 rows; other paddings are taken at face value
    arch["vocab_size"] = 12 if rows == 16 else rows
    return _make_config(arch, f"{path} (inferred)")


# --------------------------------------------------------------------------------------------
# Matching a state dict onto a model
# --------------------------------------------------------------------------------------------


def _alias_groups(model: nn.Module) -> list[list[str]]:
    """Names in the state dict that are one tensor (tied lm_head, shared Sin freq), first name first."""
    by_id: dict[int, list[str]] = {}
    persistent = set(model.state_dict())
    for name, t in list(model.named_parameters(remove_duplicate=False)) + list(
            model.named_buffers(remove_duplicate=False)):
        if name in persistent:
            by_id.setdefault(id(t), []).append(name)
    return [names for names in by_id.values() if len(names) > 1]


def _derived_buffers(model: nn.Module) -> dict[str, Tensor]:
    """The non-persistent, config-derived buffers (z, t, deltas) under their official names."""
    persistent = set(model.state_dict())
    return {n: b for n, b in model.named_buffers() if n not in persistent}


def _fmt(keys: list[str], limit: int = 12) -> str:
    more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_state_dict_checked(model: nn.Module, sd: dict[str, Tensor], source: str = "checkpoint",
                            check_buffers: Literal["error", "warn"] = "error") -> None:
    """Load `sd` into `model`, accounting for every key; raise listing every mismatch.

    Official extras are handled here: stored z/t/deltas are compared with the recomputed
    buffers (error or warning beyond 1e-4) and dropped; names of one shared tensor (tied
    lm_head, the shared `freq`) may be stored once or several times (then they must agree).
    """
    expected = model.state_dict()
    derived = _derived_buffers(model)
    groups = _alias_groups(model)
    missing: list[str] = []
    unexpected: list[str] = []
    wrong: list[str] = []
    buffer_diffs: list[str] = []
    for k, v in sd.items():
        ref = expected.get(k, derived.get(k))
        if ref is None:
            unexpected.append(k)
        elif tuple(v.shape) != tuple(ref.shape):
            wrong.append(f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(ref.shape)}")
        elif k in derived:
            diff = (v.float() - ref.float()).abs().max().item()
            if not diff <= _BUFFER_ATOL:
                buffer_diffs.append(f"{k} (max |diff| {diff:.3g})")
    aliased = {n for g in groups for n in g}
    missing += [k for k in expected if k not in sd and k not in aliased]
    usable = {k: v for k, v in sd.items() if k in expected}
    disagree: list[str] = []
    for group in groups:
        present = [n for n in group if n in usable]
        if not present:
            missing.append(group[0])
            continue
        first = usable[present[0]]
        for n in present[1:]:
            if tuple(usable[n].shape) == tuple(first.shape) and not torch.equal(usable[n], first):
                disagree.append(f"{n} != {present[0]}")
        for n in group:
            usable[n] = first
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {_fmt(missing)}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {_fmt(sorted(unexpected))}")
    if wrong:
        problems.append(f"wrongly shaped keys ({len(wrong)}): {_fmt(wrong)}")
    if disagree:
        problems.append(f"tensors that must be one shared/tied tensor differ ({len(disagree)}): {_fmt(disagree)}")
    if problems:
        raise ValueError(f"{source} does not match the model {type(model).__name__} "
                         f"(keys shown without the 'model.'/'hyena.' prefix and '.layer'):\n  "
                         + "\n  ".join(problems))
    if buffer_diffs:
        msg = (f"{source}: stored positional/decay buffers differ from those the config implies "
               f"(wrong l_max, emb_dim or decay settings in the config?): {_fmt(buffer_diffs)}")
        if check_buffers == "error":
            raise ValueError(msg)
        warnings.warn(msg, stacklevel=3)
    with torch.no_grad():
        for k, t in model.state_dict(keep_vars=True).items():
            t.copy_(usable[k])


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def build_model(ckpt: Checkpoint, task: Task = "auto", num_labels: int | None = None,
                pooling: str | None = None, problem_type: str | None = None,
                check_buffers: Literal["error", "warn"] = "error") -> PretrainedMixin:
    """Build the model a `Checkpoint` describes and load its weights (see `load_pretrained`)."""
    if task == "auto":
        task = "classification" if ckpt.head is not None else "causal_lm"
    sd = dict(ckpt.state_dict)
    if task == "causal_lm":
        if num_labels is not None:
            raise ValueError("num_labels is only meaningful with task='classification'")
        model = _head_class("causal_lm")(ckpt.config)
    elif task == "classification":
        head = dict(ckpt.head or {})
        if num_labels is not None and head.get("num_labels", num_labels) != num_labels:
            raise ValueError(f"{ckpt.source}: the checkpoint's classifier has {head['num_labels']} labels, "
                             f"not num_labels={num_labels}")
        n = head.get("num_labels", num_labels)
        if n is None:
            raise ValueError(f"{ckpt.source} holds no classification head: pass num_labels=")
        model = _head_class("classification")(
            ckpt.config, n, pooling=pooling or head.get("pooling", "last"),
            problem_type=problem_type or head.get("problem_type", "single_label"))
        # A language-model checkpoint gives the backbone; its (tied) LM head has no place here
        # and the new classification head keeps its fresh initialisation.
        sd.pop("lm_head.weight", None)
        if "head.weight" not in sd:
            sd.update({k: v for k, v in model.state_dict().items() if k.startswith("head.")})
            ckpt.notes.append("classification head freshly initialised (the checkpoint has none)")
    else:
        raise ValueError(f"task must be 'auto', 'causal_lm' or 'classification', got {task!r}")
    load_state_dict_checked(model, sd, source=f"{ckpt.source} ({ckpt.layout} layout)",
                            check_buffers=check_buffers)
    return model.eval()


def load_pretrained(path: str | Path, task: Task = "auto", *, num_labels: int | None = None,
                    pooling: str | None = None, problem_type: str | None = None,
                    config: HyenaConfig | None = None, config_overrides: dict[str, Any] | None = None,
                    check_buffers: Literal["error", "warn"] = "error",
                    revision: str | None = None) -> PretrainedMixin:
    """Load a HyenaDNA model from a release directory, our format, a Lightning .ckpt or one file.

    `path` may also be a Hugging Face Hub id (``LongSafari/hyenadna-small-32k-seqlen-hf``) or a
    released name (``hyenadna-tiny-1k-seqlen``), fetched at `revision` (`resolve_checkpoint`).
    The model is built with the checkpoint's own l_max and returned in eval mode on CPU.
    ``task="classification"`` with ``num_labels`` puts a fresh classifier on a pretrained
    backbone; ``config_overrides`` may change non-architectural fields (e.g. ``shift``,
    dropouts, ``gradient_checkpointing``, ``use_fast_path``), never shapes or l_max.
    """
    ckpt = read_checkpoint(path, config=config, revision=revision)
    if config_overrides:
        fixed = sorted(set(config_overrides) & _ARCH_FIELDS)
        if fixed:
            raise ValueError(f"config_overrides may not change {fixed}: they are fixed by the checkpoint")
        ckpt.config = _make_config({**ckpt.config.to_dict(), **config_overrides}, "config_overrides")
    return build_model(ckpt, task, num_labels=num_labels, pooling=pooling, problem_type=problem_type,
                       check_buffers=check_buffers)


class PretrainedMixin:
    """`save_pretrained` / `from_pretrained` on the model heads, in the formats of this module.

    A head names its task in its class statement, ``class HyenaDNAForCausalLM(PretrainedMixin,
    nn.Module, task="causal_lm")``, and `build_model` builds the class named for a task: the
    model file imports this mixin, so this module never imports the model file.
    """

    task: ClassVar[str]

    def __init_subclass__(cls, task: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if task is not None:
            if task not in _TASKS:
                raise ValueError(f"task must be one of {', '.join(_TASKS)}, got {task!r}")
            cls.task = task
            _HEADS[task] = cls

    def save_pretrained(self, directory: str | Path, tokenizer: CharTokenizer | None = None) -> Path:
        """Write config.json + model.safetensors + the tokenizer files to `directory` (`save_pretrained`)."""
        return save_pretrained(self, directory, tokenizer=tokenizer)

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs: Any) -> Any:
        """Load any supported checkpoint as this kind of model (`load_pretrained` with this task)."""
        return load_pretrained(path, task=cls.task, **kwargs)  # type: ignore[arg-type]


_TASKS = ("causal_lm", "classification")
_HEADS: dict[str, type] = {}  # task -> the head class that named it (hyenadna.model)


def _head_class(task: str) -> type:
    if task not in _HEADS:
        raise RuntimeError(f"no model class for task {task!r}: import hyenadna.model first")
    return _HEADS[task]


def model_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The state dict to store: each shared/tied tensor once, no recomputable buffers."""
    sd = model.state_dict()
    for group in _alias_groups(model):
        for name in group[1:]:
            sd.pop(name, None)
    return sd


def _fsync_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def save_pretrained(model: PretrainedMixin, directory: str | Path, tokenizer: CharTokenizer | None = None,
                    extras: dict[str, Tensor] | None = None) -> Path:
    """Write `model` as config.json + model.safetensors + tokenizer(_config).json into `directory`.

    Atomic: the files are written to a temporary sibling directory and renamed into place, so
    a failure never leaves a half-written or corrupted checkpoint. An existing `directory` is
    replaced only if it is empty or a previous save of ours.
    """
    from safetensors.torch import save as st_save

    directory = Path(directory)
    if not isinstance(model, PretrainedMixin):
        raise TypeError(f"save_pretrained takes a HyenaDNAForCausalLM or HyenaDNAForSequenceClassification, "
                        f"got {type(model).__name__}")
    if directory.exists():
        if not directory.is_dir():
            raise FileExistsError(f"{directory} exists and is not a directory")
        ours = (directory / CONFIG_NAME).is_file() and _read_json(directory / CONFIG_NAME).get("format") == FORMAT_NAME
        if any(directory.iterdir()) and not ours:
            raise FileExistsError(f"{directory} exists and is not a hyenadna checkpoint; refusing to replace it")
    head = None
    if model.task == "classification":
        head = {"num_labels": model.num_labels, "pooling": model.pooling, "problem_type": model.problem_type}
    meta = config_to_json(model.config, type(model).__name__, head)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model_state_dict(model).items()}
    for name, t in (extras or {}).items():
        tensors[EXTRA_PREFIX + name] = t.detach().cpu().contiguous()
    blob = st_save(tensors, metadata={"format": FORMAT_NAME, "format_version": str(FORMAT_VERSION),
                                      "config": json.dumps(meta)})
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temporary_folder(directory)  # not mkdtemp: the folder keeps the user's umask, not 0o700
    old: Path | None = None
    try:
        _fsync_write(tmp / WEIGHTS_NAME, blob)
        _fsync_write(tmp / CONFIG_NAME, (json.dumps(meta, indent=2) + "\n").encode())
        tok = tokenizer if tokenizer is not None else CharTokenizer()
        for name, text in tok.to_hf_files(model_max_length=model.config.l_max).items():
            _fsync_write(tmp / name, text.encode())
        if directory.exists():
            old = directory.parent / f".{directory.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(directory, old)
        os.rename(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not directory.exists():
            os.rename(old, directory)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return directory


def convert(src: str | Path, dst: str | Path, config: HyenaConfig | None = None,
            check_buffers: Literal["error", "warn"] = "error", revision: str | None = None) -> Checkpoint:
    """Convert a release / Lightning checkpoint (local or on the Hub) into our format at `dst`."""
    ckpt = read_checkpoint(src, config=config, revision=revision)
    model = build_model(ckpt, check_buffers=check_buffers)
    save_pretrained(model, dst, tokenizer=ckpt.tokenizer, extras=ckpt.extras)
    return ckpt


def to_official_state_dict(model: nn.Module, layer_wrapped: bool = False) -> dict[str, Tensor]:
    """Our model's weights in the original-release key layout (``model.`` prefix, buffers included)."""
    out: dict[str, Tensor] = {}
    sd = model.state_dict()
    sd.update(_derived_buffers(model))
    for k, v in sd.items():
        if layer_wrapped:
            k = re.sub(r"\.(mixer|mlp)\.", r".\1.layer.", k)
        out["model." + k] = v
    return out


def to_hf_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """Our model's weights in the -hf key layout (``hyena.`` prefix, separate lm_head, one freq)."""
    sd = model_state_dict(model)
    sd.update(_derived_buffers(model))
    out = {"hyena." + k: v.clone() for k, v in sd.items()}
    out["lm_head.weight"] = model.lm_head.weight.detach().clone()
    return out


def official_keys(config: HyenaConfig, layer_wrapped: bool = False) -> list[str]:
    """Every key of an original-release state dict for `config`, from the key table above."""
    keys = [k for k in OFFICIAL_TOP_KEYS if k.startswith("backbone.embeddings")]
    for i in range(config.n_layer):
        for k in OFFICIAL_LAYER_KEYS:
            if layer_wrapped:
                k = re.sub(r"^(mixer|mlp)\.", r"\1.layer.", k)
            keys.append(f"backbone.layers.{i}.{k}")
    keys += [k for k in OFFICIAL_TOP_KEYS if not k.startswith("backbone.embeddings")]
    return ["model." + k for k in keys]
