"""Order-k Markov baseline: the perplexity any DNA language model must beat.

Counts of (k previous bases -> next base) over the training sequences, add-one (Laplace)
smoothing, scored on exactly the windows and positions the model is validated on. At the
start of a window fewer than k previous tokens exist (the model sees no more either), so those
positions use the longest available context (orders k-1, ..., 1, each fitted the same way).
The alphabet is A, C, G, T, N; any other token id counts as N.
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
