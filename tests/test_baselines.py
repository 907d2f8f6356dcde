"""The k-mer logistic regression floor and the robust loss-plot y-range."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hyenadna.baselines import KmerLogistic, kmer_features
from hyenadna.run import plot_loss_curves, robust_ylim
from hyenadna.tokenizer import CharTokenizer

A = CharTokenizer.A_ID


def toy_task(n: int, seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Two classes that differ only in composition: GC-rich vs AT-rich random sequences."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    seqs = [A + rng.choice(4, 40, p=[0.15, 0.35, 0.35, 0.15] if y else [0.35, 0.15, 0.15, 0.35]) for y in labels]
    return seqs, labels


def test_kmer_features_count_every_window_and_skip_n() -> None:
    ids = np.array([A, A + 1, A, A + 1, CharTokenizer.token_to_id["N"], A])  # A C A C N A
    f = kmer_features([ids], ks=[2])[0]
    # AC, CA, AC counted (CN and NA skipped): frequencies 2/3 and 1/3
    assert f[0 * 4 + 1] == pytest.approx(2 / 3) and f[1 * 4 + 0] == pytest.approx(1 / 3) and f.sum() == pytest.approx(1)
    assert kmer_features([ids[:1]], ks=[3]).sum() == 0
    with pytest.raises(ValueError, match="k-mer sizes"):
        kmer_features([ids], ks=[0])


def test_kmer_logistic_beats_chance_and_is_deterministic() -> None:
    train, test = toy_task(200, 0), toy_task(200, 1)
    a = KmerLogistic((3, 4)).fit(*train)
    b = KmerLogistic((3, 4)).fit(*train)
    acc = a.accuracy(*test)
    assert acc > 0.8  # chance is 0.5
    assert np.array_equal(a.weight, b.weight) and acc == b.accuracy(*test)
    with pytest.raises(ValueError, match="2 sequences but 3 labels"):
        KmerLogistic().fit(train[0][:2], np.array([0, 1, 0]))


def test_loss_plot_y_range_ignores_the_first_steps(tmp_path: Path) -> None:
    csv = tmp_path / "metrics.csv"
    rows = ["epoch,step,train/loss,val/loss,val/acc"]
    rows += [f"0,{s},{1.78 if s == 0 else 1.0 - 0.01 * s},," for s in range(0, 40, 2)]
    rows += ["0,19,,0.95,0.6", "1,39,,0.80,0.7"]
    csv.write_text("\n".join(rows) + "\n")
    png = tmp_path / "loss_curves.png"
    lo, hi = plot_loss_curves(csv, png, metric="val/acc")
    assert png.is_file() and png.stat().st_size > 1000
    assert hi < 1.2 and lo < 0.62  # the 1.78 spike is out of range; every point after it is in
    assert robust_ylim([], []) == (0.0, 1.0)
