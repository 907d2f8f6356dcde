"""Embeddings, scoring, variant effects and generation on a tiny random model."""

from __future__ import annotations

import errno
import gzip
import os
import random
import re

import numpy as np
import pytest
import torch

from hyenadna.inference import (
    CachedDecoder,
    embed,
    embed_to_file,
    filter_logits,
    generate,
    hidden_states,
    open_records,
    read_vcf,
    score_sequences,
    variant_effects,
    write_vep_skipped,
    write_vep_tsv,
)
from hyenadna.model import HyenaConfig, HyenaDNAForCausalLM
from hyenadna.tokenizer import CharTokenizer

TOK = CharTokenizer()


@pytest.fixture(scope="module")
def lm() -> HyenaDNAForCausalLM:
    torch.manual_seed(0)
    m = HyenaDNAForCausalLM(HyenaConfig(d_model=16, n_layer=2, d_inner=32, l_max=130, filter_order=8)).eval()
    with torch.no_grad():  # larger weights so that outputs depend visibly on the input
        for p in m.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return m


def rand_seq(n: int, rng: random.Random) -> str:
    return "".join(rng.choice("ACGT") for _ in range(n))


@pytest.fixture(scope="module")
def seqs() -> list[str]:
    rng = random.Random(0)
    return [rand_seq(n, rng) for n in (40, 7, 100, 1, 63)]


def single_hidden(lm, seq: str) -> torch.Tensor:
    return hidden_states(lm, torch.as_tensor(TOK.encode(seq))[None])[0]


# ------------------------------------------------------------------------------- embeddings


@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_right_padded_batches_equal_unpadded_sequences(lm, seqs, pooling) -> None:
    batched = embed(lm, TOK, seqs, pooling=pooling, batch_size=5)
    for i, s in enumerate(seqs):
        h = single_hidden(lm, s)
        ref = h.mean(0) if pooling == "mean" else h[-1]
        torch.testing.assert_close(batched[i], ref, atol=1e-5, rtol=1e-5)


def test_left_padding_changes_a_causal_model_so_it_is_not_used(lm, seqs) -> None:
    # Documents why embeddings pad on the right: pad tokens in front of a sequence are context.
    enc = TOK.batch_encode(seqs[:2], padding_side="left")
    h = hidden_states(lm, torch.as_tensor(enc["input_ids"]))
    mask = torch.as_tensor(enc["attention_mask"]).bool()
    left_mean = h[1][mask[1]].mean(0)
    assert (left_mean - single_hidden(lm, seqs[1]).mean(0)).abs().max() > 1e-3


def test_per_position_embeddings_come_with_a_mask(lm, seqs) -> None:
    hidden, mask = embed(lm, TOK, seqs, pooling="none", batch_size=2)
    assert hidden.shape == (len(seqs), 100, 16) and mask.sum(1).tolist() == [len(s) for s in seqs]
    assert torch.all(hidden[~mask] == 0)
    for i, s in enumerate(seqs):
        torch.testing.assert_close(hidden[i, : len(s)], single_hidden(lm, s), atol=1e-5, rtol=1e-5)


def write_fasta(path, records, width: int = 30) -> None:
    wrap = lambda s: "".join(s[i:i + width] + "\n" for i in range(0, len(s), width))  # noqa: E731
    path.write_text("".join(f">{n} some description\n{wrap(s)}" for n, s in records))


def test_embed_to_file_npy_and_pt_shards_from_fasta_and_csv(lm, seqs, tmp_path) -> None:
    records = [(f"s{i}", s) for i, s in enumerate(seqs)]
    write_fasta(tmp_path / "in.fa", records)
    (tmp_path / "in.csv").write_text("name,sequence\n" + "".join(f"{n},{s}\n" for n, s in records))
    expected = embed(lm, TOK, seqs, pooling="mean")
    for src in (open_records(tmp_path / "in.fa"), open_records(tmp_path / "in.csv", id_column="name")):
        out = embed_to_file(lm, TOK, src, tmp_path / "emb.npy", batch_size=2, progress=False)
        arr = np.load(tmp_path / "emb.npy")
        np.testing.assert_allclose(arr, expected.numpy(), atol=1e-5)
        assert (tmp_path / "emb.ids.txt").read_text().split() == [n for n, _ in records]
        assert out.n_sequences == len(seqs)
    per_pos = embed_to_file(lm, TOK, open_records(tmp_path / "in.fa"), tmp_path / "pp.npy", pooling="none",
                            batch_size=2, progress=False)
    arr, mask = np.load(tmp_path / "pp.npy"), np.load(tmp_path / "pp.mask.npy")
    assert arr.shape == (5, 100, 16) and mask.sum(1).tolist() == [len(s) for s in seqs]
    assert np.all(arr[~mask] == 0)
    np.testing.assert_allclose(arr[2, :100], single_hidden(lm, seqs[2]).numpy(), atol=1e-5)
    assert len(per_pos.files) == 3
    shards = embed_to_file(lm, TOK, open_records(tmp_path / "in.fa"), tmp_path / "shards", pooling="last",
                           batch_size=2, shard_size=3, progress=False)
    assert [p.name for p in shards.files] == ["shard-00000.pt", "shard-00001.pt"]
    parts = [torch.load(p, weights_only=True) for p in shards.files]
    assert sum((p["ids"] for p in parts), []) == [n for n, _ in records]
    torch.testing.assert_close(torch.cat([p["embeddings"] for p in parts]),
                               embed(lm, TOK, seqs, pooling="last"), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("pooling", ["mean", "none"])
def test_safetensors_shards_hold_exactly_shard_size_records_with_their_ids(lm, seqs, tmp_path, pooling) -> None:
    """--shard-size means records: 5 records, batches of 2, shards of 3 -> 3 + 2 (a batch spans two
    shards); each .safetensors shard holds its ids next to the vectors and loads without torch."""
    import subprocess
    import sys

    from safetensors.numpy import load_file

    from hyenadna.inference import load_embedding_shard

    records = [(f"s{i} é", s) for i, s in enumerate(seqs)]  # a space and a non-ASCII letter survive
    out = embed_to_file(lm, TOK, lambda: iter(records), tmp_path / "st", pooling=pooling, batch_size=2, shard_size=3,
                        shard_format="safetensors", progress=False)
    assert [p.name for p in out.files] == ["shard-00000.safetensors", "shard-00001.safetensors"]
    parts = [load_embedding_shard(p) for p in out.files]
    assert [p["ids"] for p in parts] == [[n for n, _ in records[:3]], [n for n, _ in records[3:]]]
    expected = embed(lm, TOK, seqs, pooling=pooling)
    if pooling == "none":
        hidden, mask = expected
        for part, rows in zip(parts, (slice(0, 3), slice(3, 5))):
            width = part["attention_mask"].shape[1]
            assert width == max(len(s) for s in seqs[rows])  # padded to the shard's longest record
            np.testing.assert_array_equal(part["attention_mask"], mask[rows, :width].numpy())
            np.testing.assert_allclose(part["embeddings"], hidden[rows, :width].numpy(), atol=1e-5)
    else:
        np.testing.assert_allclose(np.concatenate([p["embeddings"] for p in parts]), expected.numpy(), atol=1e-5)
    raw = load_file(str(out.files[1]))
    assert bytes(raw["ids"]).decode().split("\n") == ["s3 é", "s4 é"]
    code = ("import sys; sys.modules['torch'] = None\n"  # any import of torch fails
            "from safetensors.numpy import load_file\n"
            f"t = load_file({str(out.files[0])!r}); print(t['embeddings'].shape[0], bytes(t['ids']).decode())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split("\n")[0].startswith("3 s0 é")
    pt = embed_to_file(lm, TOK, lambda: iter(records), tmp_path / "pt", pooling=pooling, batch_size=2, shard_size=3,
                       progress=False)
    assert [len(torch.load(p, weights_only=True)["ids"]) for p in pt.files] == [3, 2]  # .pt shards count records too


def test_embed_refuses_a_shard_folder_that_holds_files_and_a_shard_size_below_1(lm, seqs, tmp_path) -> None:
    write_fasta(tmp_path / "in.fa", [(f"s{i}", s) for i, s in enumerate(seqs)])
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "shard-00000.pt").write_bytes(b"from an earlier run")

    def never_read():  # the refusal comes before the input is read
        raise AssertionError("the input was read")

    with pytest.raises(ValueError, match=r"shard folder .*shards is not empty \(it holds shard-00000.pt\)"):
        embed_to_file(lm, TOK, never_read, shards, progress=False)
    assert [p.name for p in shards.iterdir()] == ["shard-00000.pt"]
    for bad in (0, -3):
        with pytest.raises(ValueError, match=rf"shard_size must be a number of records >= 1, got {bad}"):
            embed_to_file(lm, TOK, open_records(tmp_path / "in.fa"), tmp_path / "new", shard_size=bad, progress=False)
    assert not (tmp_path / "new").exists()


def _fails_on_the_second_pass(records):  # type: ignore[no-untyped-def]
    """A record source whose second reading (the embedding pass) breaks after its first record."""
    passes = []

    def read():  # type: ignore[no-untyped-def]
        passes.append(1)
        for i, rec in enumerate(records):
            if len(passes) == 2 and i == 1:
                raise RuntimeError("input went away")
            yield rec
    return read


@pytest.mark.parametrize("output", ["e.npy", "shards"])
@pytest.mark.parametrize("pooling", ["mean", "none"])
def test_a_failed_embedding_leaves_the_previous_outputs_and_no_temporary(lm, seqs, tmp_path, output, pooling) -> None:
    records = [(f"s{i}", s) for i, s in enumerate(seqs)]
    out = tmp_path / output
    if output == "e.npy":
        embed_to_file(lm, TOK, lambda: iter(records[:2]), out, pooling=pooling, progress=False)
    else:
        out.mkdir()  # a shard folder is only written when new or empty
    before = {p: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    listing = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(RuntimeError, match="input went away"):
        embed_to_file(lm, TOK, _fails_on_the_second_pass(records), out, pooling=pooling, batch_size=1, shard_size=1,
                      progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == listing  # no partial output, no temporary
    assert {p: p.read_bytes() for p in before} == before
    assert output == "e.npy" or list(out.iterdir()) == []  # no shard of the failed run


def test_a_full_disk_for_the_npy_output_is_an_os_error_naming_it(lm, seqs, tmp_path, monkeypatch) -> None:
    records = [(f"s{i}", s) for i, s in enumerate(seqs)]
    embed_to_file(lm, TOK, lambda: iter(records), tmp_path / "e.npy", progress=False)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def full(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full)  # the disk cannot hold the array the map needs
    with pytest.raises(OSError) as info:
        embed_to_file(lm, TOK, lambda: iter(records), tmp_path / "e.npy", progress=False)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(tmp_path / "e.npy")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_bed_input_reads_intervals_and_reverse_complements_minus_strand(lm, tmp_path) -> None:
    rng = random.Random(1)
    chrom = rand_seq(200, rng)
    write_fasta(tmp_path / "ref.fa", [("chr1", chrom)])
    (tmp_path / "x.bed").write_text("chr1\t10\t50\tpeak1\t0\t+\nchr1\t10\t50\tpeak1rc\t0\t-\nchr1\t100\t120\n")
    recs = list(open_records(tmp_path / "x.bed", fasta=tmp_path / "ref.fa")())
    rc = chrom[10:50].translate(str.maketrans("ACGT", "TGCA"))[::-1]
    assert recs == [("peak1", chrom[10:50]), ("peak1rc", rc), ("chr1:100-120", chrom[100:120])]


@pytest.mark.parametrize("kind", ["fasta", "csv", "bed", "vcf"])
@pytest.mark.parametrize("damage", ["truncated", "bad CRC"])
def test_a_damaged_gzip_input_is_a_value_error_naming_the_file(tmp_path, kind, damage) -> None:
    rng = random.Random(3)
    write_fasta(tmp_path / "ref.fa", [("chr1", rand_seq(2000, rng))])
    recs = [(f"s{i}", rand_seq(100, rng)) for i in range(300)]
    text = {
        "fasta": "".join(f">{n}\n{s}\n" for n, s in recs),
        "csv": "name,sequence\n" + "".join(f"{n},{s}\n" for n, s in recs),
        "bed": "".join(f"chr1\t{i}\t{i + 50}\n" for i in range(1500)),
        "vcf": "#CHROM\tPOS\tID\tREF\tALT\n" + "".join(f"chr1\t{i}\t.\tA\tC\n" for i in range(1, 1500)),
    }[kind]
    data = gzip.compress(text.encode())
    # cut mid-stream (EOFError inside gzip), or a CRC that does not match (BadGzipFile at the end)
    data = data[: len(data) // 2] if damage == "truncated" else data[:-8] + bytes(4) + data[-4:]
    path = tmp_path / f"in.{kind}.gz"
    path.write_bytes(data)
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}: truncated or corrupt gzip file \("):
        list(read_vcf(path) if kind == "vcf" else open_records(path, fasta=tmp_path / "ref.fa")())


def test_too_long_or_invalid_records_fail_before_any_output(lm, tmp_path) -> None:
    write_fasta(tmp_path / "in.fa", [("ok", "ACGT"), ("huge", "A" * 131)])
    with pytest.raises(ValueError, match=r"record 1 \('huge'\) has 131 bases, more than the model's l_max=130"):
        embed_to_file(lm, TOK, open_records(tmp_path / "in.fa"), tmp_path / "o.npy", progress=False)
    assert not (tmp_path / "o.npy").exists()
    write_fasta(tmp_path / "bad.fa", [("ok", "ACGT"), ("digits", "AC1T")])
    with pytest.raises(ValueError, match=r"record 1 \('digits'\).*position 2"):
        embed_to_file(lm, TOK, open_records(tmp_path / "bad.fa"), tmp_path / "o.npy", progress=False)


# ------------------------------------------------------------------------------- scoring


def test_log_likelihood_matches_a_direct_computation(lm, seqs) -> None:
    scores = list(score_sequences(lm, TOK, [(str(i), s) for i, s in enumerate(seqs)], batch_size=3))
    for sc, s in zip(scores, seqs):
        ids = torch.as_tensor(TOK.encode(s))
        logp = torch.log_softmax(lm(ids[None]).logits[0].float(), -1)
        ll = sum(logp[t - 1, ids[t]].item() for t in range(1, len(s)))
        assert sc.n_scored == len(s) - 1
        assert sc.log_likelihood == pytest.approx(ll, abs=1e-3)
        if sc.n_scored:
            assert sc.perplexity == pytest.approx(np.exp(-ll / (len(s) - 1)), rel=1e-4)


# ------------------------------------------------------------------------------- variant effects


def full_window_llr(lm, ref: str, alt: str) -> float:
    def ll(s: str) -> float:
        ids = torch.as_tensor(TOK.encode(s))
        logp = torch.log_softmax(lm(ids[None]).logits[0].float(), -1)
        return sum(logp[t - 1, ids[t]].item() for t in range(1, len(s)))
    return ll(alt) - ll(ref)


def test_vep_scores_snvs_and_reports_every_skipped_record(lm, tmp_path) -> None:
    rng = random.Random(2)
    chr1, chr2 = rand_seq(300, rng), rand_seq(80, rng)
    chr1 = chr1[:150] + "a" + chr1[151:]  # a soft-masked base is still a base
    write_fasta(tmp_path / "ref.fa", [("chr1", chr1), ("chr2", chr2)])
    other = {"A": "G", "C": "T", "G": "A", "T": "C"}
    good = chr1[100].upper()
    lines = [
        f"chr1\t101\trs1\t{good}\t{other[good]}",                  # SNV
        f"chr1\t151\trs2\tA\tC,G",                                 # multi-allelic SNVs, lowercase FASTA base
        f"chr1\t121\tbadref\t{other[chr1[120]]}\t{chr1[120]}",        # REF disagrees with the FASTA
        f"chr1\t50\tindel\t{chr1[49]}\t{chr1[49]}T",               # not an SNV
        f"chr1\t300\tend\t{chr1[299]}\t{other[chr1[299]]}",        # last base: window would cross the end
        f"chr2\t40\tshortchr\t{chr2[39]}\t{other[chr2[39]]}",      # chromosome shorter than the window
        "1\t10\tnochrom\tA\tC",
        "chr1\tten\tmalformed\tA\tC",
    ]
    (tmp_path / "v.vcf").write_text("##fileformat=VCFv4.2\n#CHROM\tPOS\tID\tREF\tALT\n" + "\n".join(lines) + "\n")
    window = 120
    res = variant_effects(lm, TOK, tmp_path / "v.vcf", tmp_path / "ref.fa", window=window, reverse_complement=True,
                          batch_size=2)
    assert [(s.variant.id, s.variant.alt) for s in res.scores] == [("rs1", other[good]), ("rs2", "C"), ("rs2", "G")]
    assert res.skip_counts() == {"REF mismatch": 1, "not an SNV": 1, "near chromosome end": 2,
                                 "unknown chromosome": 1, "malformed": 1}
    comp = str.maketrans("ACGT", "TGCA")
    for s in res.scores:
        p0 = s.variant.pos - 1
        ref = chr1[p0 - window // 2: p0 - window // 2 + window].upper()
        alt = ref[: window // 2] + s.variant.alt + ref[window // 2 + 1:]
        fwd = full_window_llr(lm, ref, alt)
        rev = full_window_llr(lm, ref.translate(comp)[::-1], alt.translate(comp)[::-1])
        assert s.llr_forward == pytest.approx(fwd, abs=2e-3)
        assert s.llr_reverse == pytest.approx(rev, abs=2e-3)
        assert s.llr == pytest.approx((fwd + rev) / 2, abs=2e-3)
    assert "the FASTA has 'chr1'" in [r for v, _, r in res.skipped if v and v.id == "nochrom"][0]
    skipped = write_vep_tsv(res, tmp_path / "out.tsv")
    rows = (tmp_path / "out.tsv").read_text().splitlines()
    assert rows[0].split("\t")[:6] == ["chrom", "pos", "id", "ref", "alt", "llr"] and len(rows) == 4
    assert len(skipped.read_text().splitlines()) == 1 + 6
    with pytest.raises(ValueError, match="window must be in"):
        variant_effects(lm, TOK, tmp_path / "v.vcf", tmp_path / "ref.fa", window=131)


def test_vep_files_are_replaced_together_only_when_both_are_complete(lm, tmp_path) -> None:
    rng = random.Random(4)
    chrom = rand_seq(300, rng)
    write_fasta(tmp_path / "ref.fa", [("chr1", chrom)])
    other = {"A": "G", "C": "T", "G": "A", "T": "C"}
    (tmp_path / "v.vcf").write_text(f"chr1\t150\tok\t{chrom[149]}\t{other[chrom[149]]}\nchr1\t151\tdel\tAC\tA\n")
    res = variant_effects(lm, TOK, tmp_path / "v.vcf", tmp_path / "ref.fa", window=100)
    out = tmp_path / "vep.tsv"
    write_vep_tsv(res, out)
    before = {p.name: p.read_text() for p in tmp_path.iterdir()}
    res.scores.clear()  # the new files would differ from the old ones ...
    res.skipped.append((None, 9, None))  # type: ignore[arg-type]  # ... but a record fails half-way through
    with pytest.raises(TypeError):
        write_vep_tsv(res, out)
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == before  # neither file touched, no temporary
    res.skipped.pop()
    assert write_vep_skipped(res, out) == tmp_path / "vep.skipped.tsv"
    assert (tmp_path / "vep.skipped.tsv").read_text().splitlines()[1].endswith("not an SNV: REF=AC ALT=A")
    assert out.read_text() == before["vep.tsv"]


# ------------------------------------------------------------------------------- generation


def test_generation_is_reproducible_and_top_k_1_is_greedy(lm) -> None:
    a = generate(lm, TOK, "ACGTTGCA", 20, seed=7, num_samples=3)
    assert a == generate(lm, TOK, "ACGTTGCA", 20, seed=7, num_samples=3)
    assert a != generate(lm, TOK, "ACGTTGCA", 20, seed=8, num_samples=3)
    assert all(len(s) == 20 and set(s) <= set("ACGT") for s in a)
    ids = torch.as_tensor(TOK.encode("ACGTTGCA"))[None]
    acgt = torch.as_tensor(TOK.encode("ACGT"))
    for _ in range(20):
        nxt = acgt[lm(ids).logits[0, -1, acgt].argmax()]
        ids = torch.cat([ids, nxt.view(1, 1)], 1)
    greedy = TOK.decode(ids[0, 8:].numpy())
    assert generate(lm, TOK, "ACGTTGCA", 20, top_k=1, seed=1) == [greedy]
    assert generate(lm, TOK, "ACGTTGCA", 20, top_p=1e-6, seed=2) == [greedy]
    with pytest.raises(ValueError, match="exceeds the model's l_max=130"):
        generate(lm, TOK, "ACGT", 127)


def test_filter_logits_keeps_the_right_tokens() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isfinite(filter_logits(logits, top_k=2)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(filter_logits(logits, top_p=0.8)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(filter_logits(logits, top_p=0.81)).tolist() == [[True, True, True, False]]
    sharp = torch.softmax(filter_logits(logits, temperature=0.1), -1)
    assert sharp[0, 0] > 0.99
    with pytest.raises(ValueError, match="temperature"):
        filter_logits(logits, temperature=0)


@pytest.mark.parametrize("order", [2, 3])
def test_cached_decoder_equals_the_full_forward(order) -> None:
    torch.manual_seed(4)
    m = HyenaDNAForCausalLM(HyenaConfig(d_model=16, n_layer=2, d_inner=32, l_max=90, filter_order=8,
                                        hyena_order=order)).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.2 * torch.randn_like(p))
        ids = torch.randint(7, 12, (2, 90))
        full = m(ids).logits
        dec = CachedDecoder(m, batch=2, total_len=90)
        steps = [dec.prefill(ids[:, :1])] + [dec.step(ids[:, t]) for t in range(1, 90)]
    torch.testing.assert_close(torch.stack(steps, 1), full, atol=1e-4, rtol=1e-4)


def test_cached_and_uncached_generation_sample_the_same_tokens(lm) -> None:
    kw = dict(seed=5, num_samples=2, temperature=0.8, top_k=3)
    assert generate(lm, TOK, "ACGTTGCA", 40, **kw) == generate(lm, TOK, "ACGTTGCA", 40, use_cache=False, **kw)


# ------------------------------------------------------------------------------- VCF through htslib


VCF_HEADER = ("##fileformat=VCFv4.2\n##contig=<ID=chr1,length={n}>\n##FILTER=<ID=q10,Description=\"low quality\">\n"
              "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n")


def _full_vcf(tmp_path, chrom: str, positions: list[int], filters: list[str], n: int | None = None):
    other = {"A": "G", "C": "T", "G": "A", "T": "C"}
    body = "".join(f"chr1\t{p}\tv{p}\t{chrom[p - 1]}\t{other[chrom[p - 1]]}\t.\t{f}\t.\n"
                   for p, f in zip(positions, filters))
    path = tmp_path / "full.vcf"
    path.write_text(VCF_HEADER.format(n=n or len(chrom)) + body)
    return path


def test_a_full_vcf_is_read_by_htslib_with_filter_region_and_line_numbers(tmp_path) -> None:
    import pysam

    from hyenadna.inference import VcfReader

    rng = random.Random(8)
    chrom = rand_seq(400, rng)
    positions = [100, 150, 200, 250, 300]
    path = _full_vcf(tmp_path, chrom, positions, ["PASS", "q10", ".", "PASS", "PASS"])
    reader = VcfReader(path)
    assert reader.uses_htslib and reader.contigs == {"chr1": 400}
    rows = list(reader)
    assert [(v.pos, line, reason) for v, line, reason in rows] == [(p, 5 + i, None) for i, p in enumerate(positions)]
    kept = {v.id: reason for v, _, reason in read_vcf(path, pass_only=True)}
    assert kept == {"v100": None, "v150": "filtered: FILTER=q10 (--pass-only keeps PASS only)",
                    "v200": "filtered: FILTER=. (--pass-only keeps PASS only)", "v250": None, "v300": None}
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))} has no tabix index .* for the region query"):
        VcfReader(path, region="chr1:120-260")
    indexed = pysam.tabix_index(str(path), preset="vcf", force=True, keep_original=True)  # bgzip + .tbi
    assert [v.pos for v, line, _ in read_vcf(indexed, region="chr1:150-250")] == [150, 200, 250]
    assert [v.pos for v, _, _ in read_vcf(indexed, region="chr1:201")] == [250, 300]
    with pytest.raises(ValueError, match="region 'chr2' is not a chromosome of this VCF"):
        list(read_vcf(indexed, region="chr2"))
    (tmp_path / "headerless.vcf").write_text(f"chr1\t100\t.\t{chrom[99]}\tN\n")
    assert not VcfReader(tmp_path / "headerless.vcf").uses_htslib  # the line reader takes what htslib refuses
    with pytest.raises(ValueError, match="headerless.vcf: a region query needs a bgzipped VCF .* htslib refuses"):
        VcfReader(tmp_path / "headerless.vcf", region="chr1")
    bad = path.read_text().replace("chr1\t200\t", "chr1\ttwo hundred\t")
    (tmp_path / "bad.vcf").write_text(bad)
    with pytest.raises(ValueError, match=r"bad.vcf:7: htslib cannot read this record"):
        list(read_vcf(tmp_path / "bad.vcf"))


def test_a_contig_length_that_differs_from_the_fasta_is_a_named_error(lm, tmp_path) -> None:
    from hyenadna.inference import ReferenceMismatchError

    rng = random.Random(9)
    chrom = rand_seq(400, rng)
    write_fasta(tmp_path / "ref.fa", [("chr1", chrom)])
    vcf = _full_vcf(tmp_path, chrom, [200], ["PASS"], n=248_956_422)
    with pytest.raises(ReferenceMismatchError, match=r"full.vcf: its header says ##contig=<ID=chr1,length=248956422> "
                                                     r"but chr1 has 400 bases in FASTA .*ref.fa"):
        variant_effects(lm, TOK, vcf, tmp_path / "ref.fa", window=100)
    vcf = _full_vcf(tmp_path, chrom, [200, 201], ["PASS", "q10"])
    res = variant_effects(lm, TOK, vcf, tmp_path / "ref.fa", window=100, pass_only=True)
    assert [s.variant.id for s in res.scores] == ["v200"] and res.skip_counts() == {"filtered": 1}
