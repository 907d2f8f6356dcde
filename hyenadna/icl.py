"""Few-shot in-context evaluation of a frozen HyenaDNA language model, in the paper's format.

Each demonstration is ``[sequence left-padded to max_length][SEP][label token][SEP]``; each of
``shots`` rounds holds one demonstration per class (drawn without replacement from train),
the demonstrations are shuffled and concatenated, and the query ``[sequence][SEP]`` follows.
The prediction is the argmax of the LM logits at the last position (the [SEP] after the query)
over the whole vocabulary; it is correct when it equals the query's label token.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
import torch

from hyenadna.adapt import label_token_ids
from hyenadna.model import HyenaDNAForCausalLM
from hyenadna.tasks import Split
from hyenadna.tokenizer import CharTokenizer


def demonstration(ids: np.ndarray, label_token: int, max_length: int) -> np.ndarray:
    """[ids left-padded to max_length][SEP][label token][SEP]; longer ids keep their end."""
    body = ids[-max_length:]
    pad = np.full(max_length - body.size, CharTokenizer.PAD_ID, dtype=np.int64)
    sep = np.int64(CharTokenizer.SEP_ID)
    return np.concatenate([pad, body, [sep, np.int64(label_token), sep]]).astype(np.int64)


def build_prompt(query: np.ndarray, demos: Sequence[tuple[np.ndarray, int]], max_length: int) -> np.ndarray:
    """Concatenate the (already ordered) demonstrations, then the query [sequence][SEP]."""
    parts = [demonstration(ids, tok, max_length) for ids, tok in demos]
    parts.append(np.append(query[-max_length:], np.int64(CharTokenizer.SEP_ID)))
    return np.concatenate(parts).astype(np.int64)


def sample_demos(train: Split, num_classes: int, shots: int, rng: random.Random,
                 exclude: int | None = None) -> list[int]:
    """Indices of ``shots`` demonstrations per class, without replacement, shuffled."""
    by_class: dict[int, list[int]] = {c: [] for c in range(num_classes)}
    for i, y in enumerate(train.labels.tolist()):
        if i != exclude:
            by_class[int(y)].append(i)
    chosen: list[int] = []
    for c, pool in by_class.items():
        if len(pool) < shots:
            raise ValueError(f"class {c} has {len(pool)} training examples, fewer than shots={shots}")
        chosen.extend(rng.sample(pool, shots))
    rng.shuffle(chosen)
    return chosen


def check_prompt_length(l_max: int, shots: int, num_classes: int, max_length: int) -> int:
    """Tokens in a k-shot prompt; raise if it does not fit the model's l_max."""
    if shots < 0:
        raise ValueError(f"shots must be >= 0, got {shots}")
    prompt_len = shots * num_classes * (max_length + 3) + max_length + 1
    if prompt_len > l_max:
        raise ValueError(f"a {shots}-shot prompt of {num_classes} classes x {max_length} bases is {prompt_len} tokens, "
                         f"more than the model's l_max={l_max}; lower shots or max_length")
    return prompt_len


@torch.inference_mode()
def evaluate_icl(lm: HyenaDNAForCausalLM, train: Split, test: Split, num_classes: int, shots: int,
                 max_length: int, label_tokens: list[str] | None = None, seed: int = 0,
                 limit: int | None = None) -> dict[str, float]:
    """k-shot accuracy of a frozen LM on ``test`` (first ``limit`` examples), demonstrations from ``train``."""
    check_prompt_length(lm.config.l_max, shots, num_classes, max_length)
    tokens = label_token_ids(num_classes, label_tokens)
    tok = CharTokenizer()
    rng = random.Random(seed)
    lm.eval()
    n = len(test) if limit is None else min(limit, len(test))
    correct = 0
    for i in range(n):
        demos = [(tok.encode(train.sequences[j]), tokens[int(train.labels[j])])
                 for j in sample_demos(train, num_classes, shots, rng)]
        prompt = build_prompt(tok.encode(test.sequences[i]), demos, max_length)
        logits = lm(torch.from_numpy(prompt)[None].to(next(lm.parameters()).device)).logits[0, -1]
        correct += int(int(logits.argmax()) == tokens[int(test.labels[i])])
    return {"shots": float(shots), "accuracy": correct / max(n, 1), "n": float(n)}
