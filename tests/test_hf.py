"""Hugging Face formats: our config.json / tokenizer files are what their names say; the [hf] wrappers."""

from __future__ import annotations

import json
import string
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from hyenadna import load_pretrained
from hyenadna.checkpoint import config_to_hf, model_state_dict, read_checkpoint, save_pretrained
from hyenadna.model import HyenaConfig, HyenaDNAForCausalLM, HyenaDNAForSequenceClassification
from hyenadna.tokenizer import CharTokenizer

CFG = HyenaConfig(d_model=16, n_layer=2, d_inner=32, l_max=66, filter_order=8)
DNA = "ACGTNacgtnRYKMSWBDHVrykmswbdhvTTGCA"
SETTINGS = [CharTokenizer(), CharTokenizer(lowercase="unk", iupac="unk", padding_side="right"),
            CharTokenizer(lowercase="error", iupac="error", rna="t")]


def make(cls: type = HyenaDNAForCausalLM, seed: int = 0, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    m = cls(CFG, **kw).eval()
    with torch.no_grad():  # distinct, non-default values everywhere
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


IDS = torch.randint(7, 12, (3, 40), generator=torch.Generator().manual_seed(1))


def logits(m: torch.nn.Module, ids: torch.Tensor = IDS, **kw) -> torch.Tensor:
    with torch.no_grad():
        return m(ids, **kw).logits


# ------------------------------------------------------------------------------- config.json


def test_config_json_is_a_flat_pretrained_config_dict(tmp_path: Path) -> None:
    save_pretrained(make(), tmp_path / "lm")
    d = json.loads((tmp_path / "lm" / "config.json").read_text())
    assert d["model_type"] == "hyenadna" and d["architectures"] == ["HyenaDNAForCausalLM"]
    assert d["format"] == "hyenadna" and d["format_version"] == 2 and d["tie_word_embeddings"] is True
    assert {k: d[k] for k in CFG.to_dict()} == CFG.to_dict()  # every field at the top level
    save_pretrained(make(HyenaDNAForSequenceClassification, num_labels=3, pooling="mean", problem_type="multi_label"),
                    tmp_path / "clf")
    d = json.loads((tmp_path / "clf" / "config.json").read_text())
    assert d["architectures"] == ["HyenaDNAForSequenceClassification"]
    assert (d["num_labels"], d["pooling"], d["problem_type"]) == (3, "mean", "multi_label_classification")
    with safe_open(str(tmp_path / "clf" / "model.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["config"]) == d  # the stored copy is the same dict
    back = load_pretrained(tmp_path / "clf")
    assert (back.num_labels, back.pooling, back.problem_type) == (3, "mean", "multi_label")


def test_a_typo_in_our_config_json_is_an_error(tmp_path: Path) -> None:
    save_pretrained(make(), tmp_path / "m")
    cfg = tmp_path / "m" / "config.json"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "d_modle": 16}))
    with pytest.raises(ValueError, match=r"config.json: unknown field\(s\) \['d_modle'\]"):
        load_pretrained(tmp_path / "m")


def write_format_1(model: torch.nn.Module, path: Path, tokenizer: CharTokenizer, head: dict | None) -> None:
    """A folder as format 1 wrote it: config nested under "config", tokenizer.json = settings only."""
    path.mkdir()
    meta = {"format": "hyenadna", "format_version": 1, "architecture": type(model).__name__,
            "config": model.config.to_dict(), **({"head": head} if head else {})}
    save_file({k: v.contiguous() for k, v in model_state_dict(model).items()}, str(path / "model.safetensors"),
              metadata={"format": "hyenadna", "format_version": "1", "config": json.dumps(meta)})
    (path / "config.json").write_text(json.dumps(meta, indent=2))
    (path / "tokenizer.json").write_text(json.dumps(tokenizer.to_dict()))


def test_format_1_folders_still_load(tmp_path: Path) -> None:
    lm, tok = make(), SETTINGS[1]
    write_format_1(lm, tmp_path / "lm", tok, None)
    assert torch.equal(logits(load_pretrained(tmp_path / "lm")), logits(lm))
    assert read_checkpoint(tmp_path / "lm").tokenizer == tok
    clf = make(HyenaDNAForSequenceClassification, num_labels=2, pooling="mean")
    write_format_1(clf, tmp_path / "clf", tok, {"num_labels": 2, "pooling": "mean", "problem_type": "single_label"})
    back = load_pretrained(tmp_path / "clf")
    assert back.pooling == "mean" and torch.equal(logits(back), logits(clf))
    edited = json.loads((tmp_path / "lm" / "config.json").read_text())
    edited["config"]["d_model"] = 999
    (tmp_path / "lm" / "config.json").write_text(json.dumps(edited))
    with pytest.raises(ValueError, match="d_model = 999 but the weights say 16"):
        load_pretrained(tmp_path / "lm")


# ------------------------------------------------------------------------------- tokenizer files


@pytest.mark.parametrize("tok", SETTINGS, ids=["default", "official-unk", "strict-rna"])
def test_tokenizer_json_loads_in_the_tokenizers_library_with_our_ids(tmp_path: Path, tok: CharTokenizer) -> None:
    from tokenizers import Tokenizer

    save_pretrained(make(), tmp_path / "m", tokenizer=tok)
    hf = Tokenizer.from_file(str(tmp_path / "m" / "tokenizer.json"))
    assert hf.get_vocab() == CharTokenizer.token_to_id
    accepted = "ACGTN" if tok.iupac == "error" else DNA
    if tok.iupac != "error" and tok.lowercase == "error":
        accepted = "".join(c for c in DNA if c.isupper())
    assert hf.encode(accepted).ids == tok.encode(accepted).tolist()
    # each printable character: our id where we accept it, [UNK] where we refuse it
    for c in string.printable:
        if c == "[":
            continue  # starts a special-token name in the HF tokenizer
        try:
            want = int(tok.encode(c)[0])
        except ValueError:
            want = CharTokenizer.UNK_ID
        assert hf.encode(c).ids == [want], repr(c)
    assert hf.decode(tok.encode("ACGTN").tolist()) == "ACGTN"
    assert read_checkpoint(tmp_path / "m").tokenizer == tok  # our settings come back exactly


def test_auto_tokenizer_encodes_and_pads_as_ours(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    tok = CharTokenizer()
    save_pretrained(make(), tmp_path / "m", tokenizer=tok)
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "m"))
    assert isinstance(hf, transformers.PreTrainedTokenizerFast)
    assert hf(DNA)["input_ids"] == tok.encode(DNA).tolist()
    assert (hf.pad_token_id, hf.eos_token_id, hf.padding_side, hf.model_max_length) == (4, 1, "left", CFG.l_max)
    seqs = ["ACG", "ACGTTGCA", "tt"]
    ours = tok.batch_encode(seqs)
    theirs = hf(seqs, padding=True, return_tensors="np")
    assert np.array_equal(theirs["input_ids"], ours["input_ids"])
    assert np.array_equal(theirs["attention_mask"], ours["attention_mask"])


# ------------------------------------------------------------------------------- [hf] wrappers


@pytest.fixture
def hf():
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    import hyenadna.hf as module

    return module


def test_pretrained_config_and_auto_classes_read_our_folders(hf, tmp_path: Path) -> None:
    import transformers

    lm = make()
    save_pretrained(lm, tmp_path / "lm")
    config = transformers.AutoConfig.from_pretrained(str(tmp_path / "lm"))
    assert isinstance(config, hf.HyenaDNAConfig) and config.hyena_config() == CFG
    assert transformers.PretrainedConfig.from_dict(json.loads((tmp_path / "lm" / "config.json").read_text())).d_model == 16
    auto = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "lm"))
    assert isinstance(auto, hf.HyenaDNAForCausalLM) and torch.equal(logits(auto), logits(lm))
    config.save_pretrained(str(tmp_path / "by-transformers"))  # transformers' own writing of the config
    written = json.loads((tmp_path / "by-transformers" / "config.json").read_text())
    assert "transformers_version" in written
    (tmp_path / "by-transformers" / "model.safetensors").write_bytes((tmp_path / "lm" / "model.safetensors").read_bytes())
    with pytest.raises(ValueError, match="disagrees"):  # our stored config must equal config.json ...
        load_pretrained(tmp_path / "by-transformers")
    from hyenadna.checkpoint import config_from_json

    assert config_from_json(written)[0] == CFG  # ... but transformers' bookkeeping fields are understood
    clf = make(HyenaDNAForSequenceClassification, num_labels=3, pooling="mean")
    save_pretrained(clf, tmp_path / "clf")
    auto = transformers.AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "clf"))
    assert auto.config.num_labels == 3 and auto.model.pooling == "mean" and torch.equal(logits(auto), logits(clf))
    with pytest.raises(TypeError, match="cache_dir='x' is not supported"):
        hf.HyenaDNAForCausalLM.from_pretrained(str(tmp_path / "lm"), cache_dir="x")
    # a new classifier from a language model's config; a LongSafari -hf config read as ours
    fresh = transformers.AutoModelForSequenceClassification.from_config(
        transformers.AutoConfig.from_pretrained(str(tmp_path / "lm"), num_labels=4))
    assert (fresh.model.num_labels, fresh.model.pooling, fresh.model.problem_type) == (4, "last", "single_label")
    (tmp_path / "lshf").mkdir()
    (tmp_path / "lshf" / "config.json").write_text(json.dumps(
        {**config_to_hf(CFG), "architectures": ["HyenaDNAForCausalLM"], "transformers_version": "4.35.0",
         "auto_map": {"AutoConfig": "configuration_hyena.HyenaConfig"}}))
    assert transformers.AutoConfig.from_pretrained(str(tmp_path / "lshf")).hyena_config() == CFG


def test_causal_lm_loss_uses_shifted_labels_as_transformers_does(hf) -> None:
    lm = make()
    wrapped = hf.HyenaDNAForCausalLM.from_model(lm)
    labels = IDS.clone()
    labels[:, :5] = -100
    out = wrapped(IDS, labels=labels)
    want = torch.nn.functional.cross_entropy(out.logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten())
    torch.testing.assert_close(out.loss, want, rtol=1e-6, atol=1e-6)  # fp32 rounding of one mean
    assert not wrapped.training and torch.equal(logits(wrapped), logits(lm))
    wrapped.gradient_checkpointing_enable()  # what TrainingArguments(gradient_checkpointing=True) calls
    assert lm.config.gradient_checkpointing
    wrapped.train()
    torch.manual_seed(3)  # the same embedding dropout mask in both runs
    wrapped(IDS, labels=IDS).loss.backward()  # recomputed blocks: same gradients as without
    grads = [p.grad.clone() for p in lm.parameters()]
    wrapped.zero_grad()
    wrapped.gradient_checkpointing_disable()
    torch.manual_seed(3)
    wrapped(IDS, labels=IDS).loss.backward()
    for g, p in zip(grads, lm.parameters()):
        torch.testing.assert_close(g, p.grad, rtol=1e-5, atol=1e-6)  # fp32 rounding of a recomputation


@pytest.mark.parametrize("task", ["causal_lm", "classification"])
def test_trainer_runs_two_steps_and_saves_what_we_load(hf, tmp_path: Path, task: str, one_thread) -> None:
    import transformers

    if task == "causal_lm":
        ours = make()
        model = hf.HyenaDNAForCausalLM.from_model(ours)
        rows = [{"input_ids": r, "labels": r} for r in IDS]
    else:
        ours = make(HyenaDNAForSequenceClassification, num_labels=2)
        model = hf.HyenaDNAForSequenceClassification.from_model(ours)
        rows = [{"input_ids": r, "attention_mask": torch.ones_like(r), "labels": torch.tensor(i % 2)}
                for i, r in enumerate(IDS)]
    before = {k: v.clone() for k, v in model_state_dict(ours).items()}
    args = transformers.TrainingArguments(output_dir=str(tmp_path / "run"), max_steps=2, per_device_train_batch_size=2,
                                          learning_rate=1e-2, use_cpu=True, report_to=[], save_strategy="steps",
                                          save_steps=2, logging_steps=1, disable_tqdm=True, seed=0)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=rows)
    result = trainer.train()
    assert result.global_step == 2 and np.isfinite(result.training_loss)
    assert any(not torch.equal(before[k], v) for k, v in model_state_dict(ours).items())  # it trained ours
    model.eval()
    assert torch.equal(logits(model), logits(ours))
    trainer.save_model(str(tmp_path / "run"))  # into the folder that holds the Trainer's checkpoint-2
    for folder in (tmp_path / "run", tmp_path / "run" / "checkpoint-2"):
        assert torch.equal(logits(load_pretrained(folder)), logits(ours))
    # resuming reads the checkpoint's model.safetensors (our key names) through load_state_dict
    fresh = type(model).from_model(make(type(ours), seed=5, **({} if task == "causal_lm" else {"num_labels": 2})))
    resumed = transformers.Trainer(model=fresh, args=transformers.TrainingArguments(
        output_dir=str(tmp_path / "run"), max_steps=2, per_device_train_batch_size=2, use_cpu=True, report_to=[],
        save_strategy="no", disable_tqdm=True), train_dataset=rows)
    resumed.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-2"))  # at max_steps: loads, no step
    fresh.eval()
    assert torch.equal(logits(fresh), logits(ours))
