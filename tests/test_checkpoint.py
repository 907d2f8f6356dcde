"""Checkpoint interop: official layouts built from our model load back exactly; safety; our format."""

from __future__ import annotations

import collections
import json
import os
import pickle
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from hyenadna import load_pretrained
from hyenadna.checkpoint import (
    UnsafeCheckpointError,
    config_to_hf,
    config_to_original,
    convert,
    model_state_dict,
    official_keys,
    read_checkpoint,
    save_pretrained,
    to_hf_state_dict,
    to_official_state_dict,
)
from hyenadna.model import HyenaConfig, HyenaDNAForCausalLM, HyenaDNAForSequenceClassification
from hyenadna.tokenizer import CharTokenizer

CFG = HyenaConfig(d_model=16, n_layer=2, d_inner=32, l_max=66, filter_order=8)


@pytest.fixture(scope="module")
def model() -> HyenaDNAForCausalLM:
    torch.manual_seed(0)
    m = HyenaDNAForCausalLM(CFG).eval()
    with torch.no_grad():  # distinct, non-default values everywhere (freq, biases, norms)
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randint(7, 12, (3, 60))


def logits(m: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return m(ids).logits


def write_original(model: HyenaDNAForCausalLM, path: Path, layer_wrapped: bool, with_config: bool = True) -> Path:
    """A LongSafari-style release dir: config.json + Lightning-1.8-like weights.ckpt."""
    from omegaconf import OmegaConf

    path.mkdir(parents=True)
    sd = collections.OrderedDict(to_official_state_dict(model, layer_wrapped))
    sd["train_torchmetrics.num_tokens.count"] = torch.tensor(12345)
    sd["val_torchmetrics.num_tokens.count"] = torch.tensor(678)
    n_params = sum(1 for _ in model.parameters())
    ckpt = {
        "epoch": 3, "global_step": 1000, "pytorch-lightning_version": "1.8.6",
        "state_dict": sd,
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 4}}}},
        "callbacks": {"ModelCheckpoint{'monitor': 'val/loss'}": {"best_model_score": torch.tensor(1.1),
                                                                 "best_model_path": "/x/y.ckpt"}},
        "optimizer_states": [{"state": {i: {"step": torch.tensor(5.0), "exp_avg": torch.zeros(3),
                                            "exp_avg_sq": torch.zeros(3)} for i in range(n_params)},
                              "param_groups": [{"lr": 6e-4, "weight_decay": 0.1, "params": list(range(n_params))}]}],
        "lr_schedulers": [{"base_lrs": [6e-4], "last_epoch": 1000}],
        "hyper_parameters": OmegaConf.create({
            "model": {"_name_": "lm", "d_model": 16, "layer": {"_name_": "hyena", "l_max": 66}},
            "train": {"seed": 2222, "interval": "step", "monitor": "val/loss", "ckpt": None},
            "loader": {"batch_size": [8, 16]}}),
        "misc": collections.defaultdict(list, {"seen": [1, 2]}),
    }
    torch.save(ckpt, path / "weights.ckpt")
    if with_config:
        (path / "config.json").write_text(json.dumps(config_to_original(model.config, layer_wrapped), indent=2))
    return path


def write_hf(model: HyenaDNAForCausalLM, path: Path, fmt: str) -> Path:
    path.mkdir(parents=True)
    sd = to_hf_state_dict(model)
    if fmt == "safetensors":
        save_file(sd, str(path / "model.safetensors"))
    else:
        torch.save(collections.OrderedDict(sd), path / "pytorch_model.bin")
    (path / "config.json").write_text(json.dumps(
        {**config_to_hf(model.config), "architectures": ["HyenaDNAForCausalLM"], "transformers_version": "4.35.0"}))
    return path


def edit_json(path: Path, **changes: Any) -> None:
    """Set fields of the JSON file at `path`; a double underscore reaches into an object (layer__l_max)."""
    d = json.loads(path.read_text())
    for key, value in changes.items():
        *parents, name = key.split("__")
        node = d
        for parent in parents:
            node = node[parent]
        node[name] = value
    path.write_text(json.dumps(d))


# ------------------------------------------------------------------------------- official layouts


def test_key_table_matches_the_official_layout(model: HyenaDNAForCausalLM) -> None:
    for wrapped in (False, True):
        assert sorted(to_official_state_dict(model, wrapped)) == sorted(official_keys(CFG, wrapped))
    assert len(official_keys(CFG)) == 28 * CFG.n_layer + 4  # 28 keys per layer (reference notes §2.2)


@pytest.mark.parametrize("layer_wrapped", [False, True])
def test_original_release_loads_with_identical_logits(model, ids, tmp_path, layer_wrapped) -> None:
    d = write_original(model, tmp_path / "rel", layer_wrapped)
    loaded = load_pretrained(d)
    assert isinstance(loaded, HyenaDNAForCausalLM) and loaded.config.l_max == CFG.l_max
    assert torch.equal(logits(loaded, ids), logits(model, ids))
    # the shared freq stays one tensor and lm_head stays tied after loading
    f = loaded.backbone.layers[0].mixer.filter_fn.implicit_filter
    assert f[1].freq is f[3].freq is f[5].freq
    assert loaded.lm_head.weight is loaded.backbone.embeddings.word_embeddings.weight
    ck = read_checkpoint(d)
    assert ck.layout == "original"
    assert any("torchmetrics" in n for n in ck.notes)
    assert any(".layer" in n for n in ck.notes) == layer_wrapped


def test_weights_file_alone_infers_the_config_from_shapes(model, ids, tmp_path) -> None:
    d = write_original(model, tmp_path / "rel", layer_wrapped=True, with_config=False)
    loaded = load_pretrained(d / "weights.ckpt")
    assert loaded.config.l_max == CFG.l_max and loaded.config.filter_order == CFG.filter_order
    assert torch.equal(logits(loaded, ids), logits(model, ids))


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_hf_release_loads_with_identical_logits(model, ids, tmp_path, fmt) -> None:
    d = write_hf(model, tmp_path / "hf", fmt)
    keys = load_file(str(d / "model.safetensors")) if fmt == "safetensors" else None
    if keys is not None:  # the layout the -hf repos have: one freq, separate lm_head
        assert not any(k.endswith("implicit_filter.3.freq") for k in keys) and "lm_head.weight" in keys
    loaded = load_pretrained(d)
    assert read_checkpoint(d).layout == "hf"
    assert torch.equal(logits(loaded, ids), logits(model, ids))


def test_layer_d_model_is_accepted_when_it_equals_d_model(model, ids, tmp_path) -> None:
    # The official standalone model takes this form ("HF code differs from main Safari code").
    d = write_original(model, tmp_path / "rel", layer_wrapped=False)
    edit_json(d / "config.json", layer__d_model=CFG.d_model)
    assert torch.equal(logits(load_pretrained(d), ids), logits(model, ids))
    edit_json(d / "config.json", layer__d_model=32)
    with pytest.raises(ValueError, match=re.escape(f"{d / 'config.json'}: layer.d_model is 32 but d_model is 16")):
        load_pretrained(d)


def write_layout(model: HyenaDNAForCausalLM, path: Path, layout: str) -> tuple[Path, Path]:
    """(the checkpoint to load, its config.json) of `model` written in `layout`."""
    if layout == "original":
        write_original(model, path, layer_wrapped=False)
    elif layout == "hf":
        write_hf(model, path, "safetensors")
    elif layout == "ours":
        save_pretrained(model, path)
    else:  # a Lightning checkpoint of ours (config inside), an original config.json beside it
        path.mkdir()
        torch.save({"state_dict": {"model." + k: v for k, v in model.state_dict().items()},
                    "hyena_config": model.config.to_dict()}, path / "last.ckpt")
        (path / "config.json").write_text(json.dumps(config_to_original(model.config)))
        return path / "last.ckpt", path / "config.json"
    return path, path / "config.json"


WEIGHTS_FILE = {"original": "weights.ckpt", "hf": "model.safetensors", "ours": "model.safetensors",
                "lightning": "last.ckpt"}
_EMB = "(backbone.embeddings.word_embeddings.weight is (16, 16))"
_F0 = "(backbone.layers.0.mixer.filter_fn.implicit_filter.0.weight is (8, 5))"
_Z = "(backbone.layers.0.mixer.filter_fn.pos_emb.z is (1, 66, 5))"
_VOCAB = f"(24 embedding rows at pad_vocab_size_multiple 8) but the weights have 16 rows {_EMB}"
_STORED = "but the config stored in model.safetensors says"
# (layout, config.json field, wrong value, the rest of the error's entry for it); CFG has d_model 16,
# n_layer 2, d_inner 32, 16 embedding rows, l_max 66, filter_order 8, emb_dim 5, short filter 3.
DISAGREEMENTS = [
    ("original", "d_model", 999, f"but the weights say 16 {_EMB}"),
    ("original", "n_layer", 3, "but the weights say 2 (layers 0..1 are stored)"),
    ("original", "d_inner", 48, "but the weights say 32 (backbone.layers.0.mlp.fc1.weight is (32, 16))"),
    ("original", "vocab_size", 20, _VOCAB),
    ("original", "layer.l_max", 200, f"but the weights say 66 {_Z}"),
    ("original", "layer.filter_order", 12, f"but the weights say 8 {_F0}"),
    ("original", "layer.emb_dim", 7, f"but the weights say 5 {_F0}"),
    ("original", "layer.short_filter_order", 5,
     "but the weights say 3 (backbone.layers.0.mixer.short_filter.weight is (48, 1, 3))"),
    ("hf", "d_model", 999, f"but the weights say 16 {_EMB}"),
    ("hf", "vocab_size", 20, _VOCAB),
    ("hf", "max_seq_len", 200, f"but the weights say 66 {_Z}"),
    ("hf", "emb_dim", 7, f"but the weights say 5 {_F0}"),
    ("hf", "hyena_order", 3, "but the weights say 2 (backbone.layers.0.mixer.in_proj.weight is (48, 16))"),
    ("hf", "num_inner_mlps", 1,
     "but the weights say 2 (backbone.layers.0.mixer.filter_fn.implicit_filter has 4 Linear layers)"),
    ("ours", "d_model", 999, f"but the weights say 16 {_EMB}"),
    ("ours", "n_layer", 3, "but the weights say 2 (layers 0..1 are stored)"),
    ("ours", "filter_order", 12, f"but the weights say 8 {_F0}"),
    ("ours", "l_max", 200, f"{_STORED} 66"),  # not in the weights: the stored config has it
    ("ours", "shift", 0.0, f"{_STORED} 0.05"),
    ("lightning", "vocab_size", 20, _VOCAB),
    ("lightning", "layer.filter_order", 12, f"but the weights say 8 {_F0}"),
]


@pytest.mark.parametrize("layout, field, value, says", DISAGREEMENTS, ids=[f"{c[0]}-{c[1]}" for c in DISAGREEMENTS])
def test_config_json_that_disagrees_with_the_weights_is_refused(model, tmp_path, layout, field, value, says) -> None:
    src, cfg_path = write_layout(model, tmp_path / layout, layout)
    edit_json(cfg_path, **{field.replace(".", "__"): value})
    weights = cfg_path.parent / WEIGHTS_FILE[layout]
    for target in dict.fromkeys((src, weights)):  # the folder, and its weights file alone
        with pytest.raises(ValueError) as err:
            load_pretrained(target)
        assert str(err.value) == f"{cfg_path} disagrees with {weights}: {field} = {value!r} {says}"


def test_every_disagreeing_field_is_named_and_config_argument_is_checked_too(model, tmp_path) -> None:
    src, cfg_path = write_layout(model, tmp_path / "rel", "original")
    edit_json(cfg_path, d_model=999, n_layer=3, layer__l_max=200)
    with pytest.raises(ValueError) as err:
        load_pretrained(src)
    for entry in ("d_model = 999 but the weights say 16", "n_layer = 3 but the weights say 2",
                  "layer.l_max = 200 but the weights say 66"):
        assert entry in str(err.value)
    # an explicit config= replaces the config.json and meets the same check
    with pytest.raises(ValueError, match=re.escape(f"the config= argument disagrees with {src / 'weights.ckpt'}: "
                                                   "d_inner = 64 but the weights say 32")):
        load_pretrained(src, config=HyenaConfig(d_model=16, n_layer=2, l_max=66, filter_order=8))
    assert load_pretrained(src, config=CFG).config == CFG


def test_config_json_beside_a_lightning_checkpoint_is_checked_unless_it_is_not_hyenadna(model, ids, tmp_path) -> None:
    src, cfg_path = write_layout(model, tmp_path / "run", "lightning")
    edit_json(cfg_path, d_model=999)  # the checkpoint's own hyena_config is right: the file beside is not
    with pytest.raises(ValueError, match=re.escape(f"{cfg_path} disagrees with {src}: d_model = 999 but")):
        load_pretrained(src)
    cfg_path.write_text(json.dumps({"lr": 1e-3, "batch_size": 8}))  # another tool's config.json
    assert torch.equal(logits(load_pretrained(src), ids), logits(model, ids))


def test_stored_buffers_that_differ_from_the_config_raise_or_warn(model, tmp_path) -> None:
    d = tmp_path / "hf"
    write_hf(model, d, "safetensors")
    sd = load_file(str(d / "model.safetensors"))
    sd["hyena.backbone.layers.1.mixer.filter_fn.modulation.deltas"] *= 2
    save_file(sd, str(d / "model.safetensors"))
    with pytest.raises(ValueError, match=r"layers\.1\.mixer\.filter_fn\.modulation\.deltas"):
        load_pretrained(d)
    with pytest.warns(UserWarning, match="deltas"):
        load_pretrained(d, check_buffers="warn")


def test_mismatch_lists_missing_unexpected_and_wrongly_shaped_keys(model, tmp_path) -> None:
    d = tmp_path / "hf"
    write_hf(model, d, "safetensors")
    sd = load_file(str(d / "model.safetensors"))
    del sd["hyena.backbone.layers.0.mlp.fc1.bias"]
    sd["hyena.backbone.layers.0.mixer.extra_gate.weight"] = torch.zeros(2)
    sd["hyena.backbone.ln_f.weight"] = torch.zeros(17)
    save_file(sd, str(d / "model.safetensors"))
    with pytest.raises(ValueError) as err:
        load_pretrained(d)
    msg = str(err.value)
    assert "missing keys (1): backbone.layers.0.mlp.fc1.bias" in msg
    assert "unexpected keys (1): backbone.layers.0.mixer.extra_gate.weight" in msg
    assert "backbone.ln_f.weight: checkpoint (17,) vs model (16,)" in msg


def test_untied_lm_head_is_refused(model, tmp_path) -> None:
    d = tmp_path / "hf"
    write_hf(model, d, "safetensors")
    sd = load_file(str(d / "model.safetensors"))
    sd["lm_head.weight"] += 1
    save_file(sd, str(d / "model.safetensors"))
    with pytest.raises(ValueError, match="must be one shared/tied tensor differ"):
        load_pretrained(d)


def test_unknown_config_fields_are_errors(model, tmp_path) -> None:
    d = write_original(model, tmp_path / "rel", layer_wrapped=False)
    cfg = json.loads((d / "config.json").read_text())
    cfg["layer"]["filter_ordr"] = 64
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['layer\.filter_ordr'\]"):
        load_pretrained(d)


# ------------------------------------------------------------------------------- safety, bad files


class _Exploit:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):  # runs os.system at unpickling time under a plain pickle.load
        return (os.system, (f"touch {self.target}",))


def test_malicious_pickles_are_refused_without_side_effects(tmp_path) -> None:
    target = tmp_path / "pwned"
    zipped = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "hyper_parameters": _Exploit(target)}, zipped)
    legacy = tmp_path / "evil.bin"
    legacy.write_bytes(pickle.dumps({"w": _Exploit(target)}, protocol=2))
    for path in (zipped, legacy):
        with pytest.raises(UnsafeCheckpointError, match="refusing to load"):
            load_pretrained(path)
    assert not target.exists()
    # and the same file in a release directory
    rel = tmp_path / "rel"
    rel.mkdir()
    (rel / "weights.ckpt").write_bytes(zipped.read_bytes())
    (rel / "config.json").write_text(json.dumps(config_to_original(CFG)))
    with pytest.raises(UnsafeCheckpointError, match="posix.system|os.system|system"):
        load_pretrained(rel)
    assert not target.exists()


@pytest.mark.parametrize("layout", ["original", "hf", "ours"])
def test_truncated_or_corrupt_weight_files_give_clear_errors(model, tmp_path, layout) -> None:
    d = tmp_path / layout
    if layout == "original":
        write_original(model, d, layer_wrapped=False)
        f = d / "weights.ckpt"
    elif layout == "hf":
        write_hf(model, d, "safetensors")
        f = d / "model.safetensors"
    else:
        save_pretrained(model, d)
        f = d / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"truncated or corrupt"):
        load_pretrained(d)
    f.write_bytes(b"\x00" * 3)
    with pytest.raises(ValueError, match="empty or truncated"):
        load_pretrained(d)


def test_missing_files_are_named(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_pretrained(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_pretrained(tmp_path / "empty")
    (tmp_path / "rel").mkdir()
    (tmp_path / "rel" / "config.json").write_text(json.dumps(config_to_original(CFG)))
    with pytest.raises(FileNotFoundError, match=r"\['weights.ckpt'\]"):
        load_pretrained(tmp_path / "rel")


# ------------------------------------------------------------------------------- our format


def test_save_load_round_trip_is_exact_and_stores_no_buffers(model, ids, tmp_path) -> None:
    tok = CharTokenizer(lowercase="unk", padding_side="right")
    save_pretrained(model, tmp_path / "ours", tokenizer=tok)
    stored = load_file(str(tmp_path / "ours" / "model.safetensors"))
    assert not any(k.endswith((".z", ".t", ".deltas")) for k in stored)
    assert "lm_head.weight" not in stored  # tied: stored once, as the embedding
    assert sum(k.endswith(".freq") for k in stored) == CFG.n_layer  # shared: once per layer
    loaded = load_pretrained(tmp_path / "ours")
    assert torch.equal(logits(loaded, ids), logits(model, ids))
    assert loaded.config == model.config
    assert read_checkpoint(tmp_path / "ours").tokenizer == tok
    # the safetensors file alone is self-describing
    assert torch.equal(logits(load_pretrained(tmp_path / "ours" / "model.safetensors"), ids), logits(model, ids))


def test_classifier_round_trip_and_fresh_head_on_a_pretrained_backbone(model, ids, tmp_path) -> None:
    torch.manual_seed(2)
    clf = HyenaDNAForSequenceClassification(CFG, num_labels=3, pooling="mean", problem_type="multi_label").eval()
    save_pretrained(clf, tmp_path / "clf")
    back = load_pretrained(tmp_path / "clf")
    assert isinstance(back, HyenaDNAForSequenceClassification)
    assert (back.num_labels, back.pooling, back.problem_type) == (3, "mean", "multi_label")
    assert torch.equal(logits(back, ids), logits(clf, ids))
    save_pretrained(model, tmp_path / "lm")
    fresh = load_pretrained(tmp_path / "lm", task="classification", num_labels=2)
    assert torch.equal(fresh.backbone(ids), model.backbone(ids))
    with pytest.raises(ValueError, match="pass num_labels"):
        load_pretrained(tmp_path / "lm", task="classification")


def test_config_overrides_cannot_change_the_architecture(model, tmp_path) -> None:
    save_pretrained(model, tmp_path / "m")
    assert load_pretrained(tmp_path / "m", config_overrides={"shift": 0.0}).config.shift == 0.0
    with pytest.raises(ValueError, match=r"may not change \['l_max'\]"):
        load_pretrained(tmp_path / "m", config_overrides={"l_max": 4096})


def test_save_is_atomic_and_never_clobbers_foreign_directories(model, ids, tmp_path, monkeypatch) -> None:
    import hyenadna.checkpoint as ckpt_mod

    target = tmp_path / "m"
    save_pretrained(model, target)
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    calls = {"n": 0}
    real = ckpt_mod._fsync_write

    def failing(path: Path, data: bytes) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full")
        real(path, data)

    monkeypatch.setattr(ckpt_mod, "_fsync_write", failing)
    other = HyenaDNAForCausalLM(CFG)
    with pytest.raises(OSError, match="disk full"):
        save_pretrained(other, target)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temp dirs left behind
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "cat.jpg").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="not a hyenadna checkpoint"):
        save_pretrained(model, foreign)


def test_large_1m_file_is_about_26_mb_without_buffers(tmp_path) -> None:
    cfg = HyenaConfig.preset("large-1m")
    m = HyenaDNAForCausalLM(cfg)
    save_pretrained(m, tmp_path / "large")
    size = (tmp_path / "large" / "model.safetensors").stat().st_size
    n_params = sum(p.numel() for p in m.parameters())
    assert n_params == 6_550_528
    assert abs(size - 4 * n_params) < 200_000  # fp32 parameters + a small header
    buffers = sum(b.numel() * 4 for b in m.buffers())
    assert buffers > 7 * size  # what the official layout would have added (~192 MB)


# ------------------------------------------------------------------------------- Lightning checkpoints


def test_our_lightning_checkpoint_converts_with_head_and_soft_prompt(tmp_path, ids) -> None:
    torch.manual_seed(3)
    clf = HyenaDNAForSequenceClassification(CFG, num_labels=2, pooling="mean").eval()
    prompt = torch.randn(4, CFG.d_model)
    sd = {"model." + k: v for k, v in clf.state_dict().items()}
    sd["soft_prompt"] = prompt
    sd["val_torchmetrics.acc.tp"] = torch.tensor(3)
    for hp in ({"model": {"_target_": "hyenadna.model.HyenaConfig", **CFG.to_dict()}, "pooling": "mean"},
               {"config": CFG, "pooling": "mean"}):  # a plain dict, and a pickled HyenaConfig object
        f = tmp_path / "last.ckpt"
        torch.save({"state_dict": sd, "hyper_parameters": hp, "pytorch-lightning_version": "2.6.0"}, f)
        ck = convert(f, tmp_path / "out")
        assert ck.layout == "lightning" and set(ck.extras) == {"soft_prompt"}
        back = load_pretrained(tmp_path / "out")
        assert isinstance(back, HyenaDNAForSequenceClassification) and back.pooling == "mean"
        assert torch.equal(logits(back, ids), logits(clf, ids))
        assert torch.equal(read_checkpoint(tmp_path / "out").extras["soft_prompt"], prompt)


def test_lightning_checkpoint_without_a_config_asks_for_one(tmp_path, model) -> None:
    f = tmp_path / "x.ckpt"
    torch.save({"state_dict": {"model." + k: v for k, v in model_state_dict(model).items()},
                "hyper_parameters": {"lr": 1e-3}}, f)
    with pytest.raises(ValueError, match="pass config="):
        load_pretrained(f)
    assert load_pretrained(f, config=CFG).config == CFG


def test_head_classes_save_and_load_through_their_methods(model, ids, tmp_path) -> None:
    model.save_pretrained(tmp_path / "lm")
    assert torch.equal(logits(HyenaDNAForCausalLM.from_pretrained(tmp_path / "lm"), ids), logits(model, ids))
    clf = HyenaDNAForSequenceClassification.from_pretrained(tmp_path / "lm", num_labels=4, pooling="mean")
    assert isinstance(clf, HyenaDNAForSequenceClassification) and clf.num_labels == 4
    clf.save_pretrained(tmp_path / "clf")
    assert torch.equal(logits(HyenaDNAForSequenceClassification.from_pretrained(tmp_path / "clf"), ids),
                       logits(clf, ids))


def test_use_fast_path_is_a_runtime_field_a_checkpoint_may_differ_in(model, ids, tmp_path) -> None:
    """The reference kernels change neither the state-dict keys nor what a checkpoint must match:
    a checkpoint saved from the fast model loads on the references (and back), with the same outputs
    to fp32 rounding, and a config without the field (an older checkpoint) means the fast path."""
    from hyenadna.lm import check_same_architecture

    model.save_pretrained(tmp_path / "lm")
    ref = load_pretrained(tmp_path / "lm", config_overrides={"use_fast_path": False})
    assert ref.config.use_fast_path is False and list(ref.state_dict()) == list(model.state_dict())
    torch.testing.assert_close(logits(ref, ids), logits(model, ids), rtol=1e-4, atol=1e-4)
    saved = {k: v for k, v in CFG.to_dict().items() if k != "use_fast_path"}
    assert HyenaConfig.from_dict(saved).use_fast_path is True
    check_same_architecture(saved, ref.config.to_dict(), "checkpoint")  # no error


def test_pretraining_checkpoint_with_hyena_config_loads(model, ids, tmp_path) -> None:
    # The layout hyenadna.lm.CausalLMModule writes: model.* weights, the config as a plain dict.
    f = tmp_path / "last.ckpt"
    torch.save({"state_dict": {"model." + k: v for k, v in model.state_dict().items()},
                "hyena_config": CFG.to_dict(), "optimizer_states": [], "rng_states": {"torch": torch.get_rng_state()},
                "pytorch-lightning_version": "2.6.6"}, f)
    loaded = load_pretrained(f)
    assert loaded.config == CFG and torch.equal(logits(loaded, ids), logits(model, ids))


def test_plain_backbone_state_dict_without_lm_head_loads(model, ids, tmp_path) -> None:
    # What official standalone HyenaDNAModel(use_head=False).state_dict() looks like: backbone.*
    # with the buffers, no prefix, no lm_head (the LM head is the tied embedding anyway).
    sd = {k[len("model."):]: v for k, v in to_official_state_dict(model).items() if k != "model.lm_head.weight"}
    torch.save(sd, tmp_path / "backbone.pt")
    loaded = load_pretrained(tmp_path / "backbone.pt")
    assert read_checkpoint(tmp_path / "backbone.pt").layout == "state_dict"
    assert torch.equal(logits(loaded, ids), logits(model, ids))


def test_garbage_pickle_is_reported_as_corrupt_not_as_unsafe(tmp_path) -> None:
    f = tmp_path / "pytorch_model.bin"
    f.write_bytes(b"\x80\x02garbage" * 10)
    with pytest.raises(ValueError, match="truncated or corrupt") as err:
        load_pretrained(f)
    assert not isinstance(err.value, UnsafeCheckpointError)


def test_official_finetuned_checkpoint_loads_its_decoder_as_the_head(tmp_path, ids) -> None:
    torch.manual_seed(6)
    clf = HyenaDNAForSequenceClassification(CFG, num_labels=2, pooling="mean").eval()
    lm = HyenaDNAForCausalLM(CFG)
    lm.backbone.load_state_dict(clf.backbone.state_dict())
    sd = to_official_state_dict(lm)
    sd["decoder.0.output_transform.weight"] = clf.head.weight.detach().clone()
    sd["decoder.0.output_transform.bias"] = clf.head.bias.detach().clone()
    d = tmp_path / "ft"
    d.mkdir()
    torch.save({"state_dict": sd}, d / "weights.ckpt")
    (d / "config.json").write_text(json.dumps(config_to_original(CFG)))
    loaded = load_pretrained(d)
    assert isinstance(loaded, HyenaDNAForSequenceClassification) and loaded.pooling == "mean"
    assert torch.equal(logits(loaded, ids), logits(clf, ids))
    sd["decoder.1.weight"] = torch.zeros(1)
    torch.save({"state_dict": sd}, d / "weights.ckpt")
    with pytest.raises(ValueError, match=r"unexpected keys outside 'model.': decoder\.1\.weight"):
        load_pretrained(d)


def test_hf_sequence_classifier_loads_score_as_the_head(tmp_path, ids) -> None:
    torch.manual_seed(7)
    clf = HyenaDNAForSequenceClassification(CFG, num_labels=3, pooling="last").eval()
    with torch.no_grad():
        clf.head.bias.zero_()  # the -hf `score` layer has no bias
    lm = HyenaDNAForCausalLM(CFG)
    lm.backbone.load_state_dict(clf.backbone.state_dict())
    sd = {k: v for k, v in to_hf_state_dict(lm).items() if k != "lm_head.weight"}
    sd["score.weight"] = clf.head.weight.detach().clone()
    d = tmp_path / "hfclf"
    d.mkdir()
    save_file(sd, str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps({**config_to_hf(CFG), "architectures": ["HyenaDNAForSequenceClassification"]}))
    loaded = load_pretrained(d)
    assert isinstance(loaded, HyenaDNAForSequenceClassification) and loaded.pooling == "last"
    assert torch.equal(logits(loaded, ids), logits(clf, ids))
