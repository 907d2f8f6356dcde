"""Baselines a model must beat: order-k Markov perplexity (pretraining) and k-mer logistic
regression accuracy (classification tasks).

Markov:

Counts of (k previous bases -> next base) over the training sequences, add-one (Laplace)
smoothing, scored on exactly the windows and positions the model is validated on. At the
start of a window fewer than k previous tokens exist (the model sees no more either), so those
positions use the longest available context (orders k-1, ..., 1, each fitted the same way).
The alphabet is A, C, G, T, N; any other token id counts as N.

k-mer logistic regression (`KmerLogistic`): each sequence becomes its k-mer frequencies for
every k in `ks` (k-mers with an N skipped; counts / number of k-mers, both strands unmerged),
standardised with the train mean and spread; a softmax regression with L2 penalty is fitted by
full-batch gradient descent (Adam) from zero weights: deterministic, no library beyond numpy.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np
import torch

from hyenadna.tokenizer import CharTokenizer

ALPHABET = 5  # A C G T N


def to_symbols(ids: np.ndarray) -> np.ndarray:
    """Token ids -> 0..4 (A C G T N); anything that is not a base maps to N."""
    sym = np.asarray(ids, dtype=np.int64) - CharTokenizer.A_ID
    return np.where((sym >= 0) & (sym < ALPHABET), sym, ALPHABET - 1)


def _context_codes(sym: np.ndarray, order: int) -> np.ndarray:
    """code[t] = base-5 number of sym[t-order+1 .. t], for t = order-1 .. n-1."""
    n = sym.size - order + 1
    code = np.zeros(max(n, 0), dtype=np.int64)
    for i in range(order):
        code = code * ALPHABET + sym[i:i + n]
    return code


class MarkovBaseline:
    """Order-k Markov chain over bases with add-one smoothing and shorter-context fallback."""

    def __init__(self, order: int) -> None:
        if not isinstance(order, int) or isinstance(order, bool) or not 1 <= order <= 10:
            raise ValueError(f"Markov order must be an integer in [1, 10], got {order!r}")
        self.order = order
        # counts[j]: (5**j contexts, 5 next symbols) for context length j = 1..order
        self.counts = {j: np.zeros((ALPHABET ** j, ALPHABET), dtype=np.int64) for j in range(1, order + 1)}

    def fit(self, sequences: Iterable[np.ndarray]) -> MarkovBaseline:
        """Add the transitions of each token-id sequence (e.g. each training interval)."""
        for ids in sequences:
            sym = to_symbols(ids)
            for j, table in self.counts.items():
                if sym.size <= j:
                    continue
                flat = _context_codes(sym[:-1], j) * ALPHABET + sym[j:]
                table += np.bincount(flat, minlength=table.size).reshape(table.shape)
        return self

    def log_probs(self) -> dict[int, np.ndarray]:
        """Smoothed log P(next | context) per context length: {j: (5**j, 5)}."""
        out = {}
        for j, table in self.counts.items():
            smoothed = table + 1.0
            out[j] = np.log(smoothed / smoothed.sum(axis=1, keepdims=True))
        return out

    def nll(self, input_ids: np.ndarray, targets: np.ndarray, ignore_index: int = -100,
            logp: dict[int, np.ndarray] | None = None) -> tuple[float, int]:
        """Summed negative log-likelihood (nats) and token count of one window's real targets.

        targets[t] is predicted from input_ids[.. t], as by the model; `logp` is `log_probs()`,
        passed in to score many windows without recomputing it.
        """
        keep = np.asarray(targets) != ignore_index
        if not keep.any():
            return 0.0, 0
        x, y = to_symbols(input_ids), to_symbols(targets)
        logp = self.log_probs() if logp is None else logp
        total = 0.0
        k = self.order
        for t in range(min(k - 1, x.size)):  # short contexts at the window start
            if keep[t]:
                code = int(_context_codes(x[: t + 1], t + 1)[0])
                total -= logp[t + 1][code, y[t]]
        if x.size >= k:
            codes = _context_codes(x, k)  # positions k-1 .. n-1
            pos = np.arange(k - 1, x.size)
            sel = keep[pos]
            total -= float(logp[k][codes[sel], y[pos[sel]]].sum())
        return float(total), int(keep.sum())

    def perplexity(self, items: Iterable[Mapping[str, torch.Tensor | np.ndarray]], ignore_index: int = -100) -> float:
        """exp(mean NLL) over every real target of `items` ({"input_ids", "targets"}, one window each)."""
        total, count = 0.0, 0
        logp = self.log_probs()
        for item in items:
            x, y = (np.asarray(item[key]) for key in ("input_ids", "targets"))
            s, n = self.nll(x, y, ignore_index, logp)
            total, count = total + s, count + n
        if count == 0:
            raise ValueError("no real target token in the evaluation windows")
        return math.exp(total / count)


def kmer_features(sequences: Iterable[np.ndarray], ks: Iterable[int] = (3, 4, 5, 6)) -> np.ndarray:
    """Token-id sequences -> (N, sum 4**k) k-mer frequencies (k-mers containing N or another
    non-base token skipped; each k's block sums to 1, or 0 for a sequence shorter than k)."""
    ks = list(ks)
    if not ks or any(not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= 8 for k in ks):
        raise ValueError(f"k-mer sizes must be integers in [1, 8], got {ks}")
    rows = []
    for ids in sequences:
        sym = to_symbols(ids)
        blocks = []
        for k in ks:
            n = sym.size - k + 1
            if n <= 0:
                blocks.append(np.zeros(4 ** k))
                continue
            code = np.zeros(n, dtype=np.int64)
            bad = np.zeros(n, dtype=bool)
            for i in range(k):
                part = sym[i:i + n]
                code, bad = code * 4 + np.minimum(part, 3), bad | (part == ALPHABET - 1)
            counts = np.bincount(code[~bad], minlength=4 ** k).astype(np.float64)
            blocks.append(counts / max(counts.sum(), 1.0))
        rows.append(np.concatenate(blocks))
    return np.stack(rows) if rows else np.zeros((0, sum(4 ** k for k in ks)))


class KmerLogistic:
    """Softmax regression on standardised k-mer frequencies (the floor a DNA model must beat)."""

    def __init__(self, ks: Iterable[int] = (3, 4, 5, 6), l2: float = 1e-3, steps: int = 300, lr: float = 0.05) -> None:
        self.ks, self.l2, self.steps, self.lr = tuple(ks), float(l2), int(steps), float(lr)
        self.mean = self.scale = self.weight = self.bias = None

    def _x(self, sequences: Iterable[np.ndarray]) -> np.ndarray:
        assert self.mean is not None and self.scale is not None, "fit() first"
        return (kmer_features(sequences, self.ks) - self.mean) / self.scale

    def fit(self, sequences: Iterable[np.ndarray], labels: np.ndarray, num_classes: int | None = None) -> KmerLogistic:
        """Fit on token-id sequences and integer class labels."""
        feats = kmer_features(sequences, self.ks)
        y = np.asarray(labels, dtype=np.int64).reshape(-1)
        if feats.shape[0] != y.size or y.size == 0:
            raise ValueError(f"k-mer baseline: {feats.shape[0]} sequences but {y.size} labels")
        c = int(num_classes or y.max() + 1)
        self.mean, self.scale = feats.mean(0), feats.std(0) + 1e-6
        x = (feats - self.mean) / self.scale
        onehot = np.eye(c)[y]
        w, b = np.zeros((x.shape[1], c)), np.zeros(c)
        m = [np.zeros_like(w), np.zeros_like(b)]
        v = [np.zeros_like(w), np.zeros_like(b)]
        for t in range(1, self.steps + 1):
            z = x @ w + b
            p = np.exp(z - z.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            g = (p - onehot) / y.size
            grads = [x.T @ g + self.l2 * w, g.sum(0)]
            for i, (param, grad) in enumerate(zip((w, b), grads)):  # Adam, in place
                m[i] = 0.9 * m[i] + 0.1 * grad
                v[i] = 0.999 * v[i] + 0.001 * grad * grad
                param -= self.lr * (m[i] / (1 - 0.9 ** t)) / (np.sqrt(v[i] / (1 - 0.999 ** t)) + 1e-8)
        self.weight, self.bias = w, b
        return self

    def predict(self, sequences: Iterable[np.ndarray]) -> np.ndarray:
        """Class ids (N,)."""
        assert self.weight is not None and self.bias is not None, "fit() first"
        return (self._x(sequences) @ self.weight + self.bias).argmax(1)

    def accuracy(self, sequences: Iterable[np.ndarray], labels: np.ndarray) -> float:
        """Fraction of `sequences` whose predicted class is `labels`."""
        y = np.asarray(labels, dtype=np.int64).reshape(-1)
        return float((self.predict(sequences) == y).mean())
