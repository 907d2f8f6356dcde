"""Character tokenizer: released ids, character policy, padding, reverse complement."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from hyenadna.tokenizer import CharTokenizer

# The vocabulary of the released HyenaDNA checkpoints (official CharacterTokenizer order).
RELEASED_IDS = {
    "[CLS]": 0, "[SEP]": 1, "[BOS]": 2, "[MASK]": 3, "[PAD]": 4, "[RESERVED]": 5, "[UNK]": 6,
    "A": 7, "C": 8, "G": 9, "T": 10, "N": 11,
}  # fmt: skip

COMPLEMENT = {"A": "T", "C": "G", "G": "C", "T": "A", "N": "N"}


def random_dna(rng: np.random.Generator, n: int, alphabet: str = "ACGTN") -> str:
    """A random sequence over ``alphabet``."""
    return "".join(rng.choice(list(alphabet), size=n))


@pytest.fixture
def tok() -> CharTokenizer:
    return CharTokenizer()


def test_vocabulary_matches_released_ids(tok: CharTokenizer) -> None:
    assert tok.vocab_size == CharTokenizer.vocab_size == 12
    assert dict(tok.token_to_id) == RELEASED_IDS
    assert list(tok.id_to_token) == sorted(RELEASED_IDS, key=RELEASED_IDS.get)
    constants = {
        "[CLS]": tok.CLS_ID, "[SEP]": tok.SEP_ID, "[BOS]": tok.BOS_ID, "[MASK]": tok.MASK_ID,
        "[PAD]": tok.PAD_ID, "[RESERVED]": tok.RESERVED_ID, "[UNK]": tok.UNK_ID,
        "A": tok.A_ID, "C": tok.C_ID, "G": tok.G_ID, "T": tok.T_ID, "N": tok.N_ID,
    }  # fmt: skip
    assert constants == RELEASED_IDS
    assert tok.pad_token_id == 4 and tok.sep_token_id == tok.eos_token_id == 1
    assert tok.cls_token_id == 0 and tok.bos_token_id == 2
    assert tok.mask_token_id == 3 and tok.unk_token_id == 6
    assert tok.encode("ACGTN").tolist() == [7, 8, 9, 10, 11]
    for token, i in RELEASED_IDS.items():
        assert tok.decode([i]) == token


def test_encode_dtype_and_eos(tok: CharTokenizer) -> None:
    ids = tok.encode("GATTACA", add_eos=True)
    assert ids.dtype == np.int64 and ids.ndim == 1
    assert ids.tolist() == [9, 7, 10, 10, 7, 8, 7, 1]
    assert tok.encode(b"GATTACA").tolist() == ids[:-1].tolist()
    assert tok.encode(np.frombuffer(b"GATTACA", dtype=np.uint8)).tolist() == ids[:-1].tolist()
    assert tok.encode(np.array(list("GATTACA"), dtype="S1")).tolist() == ids[:-1].tolist()
    with pytest.raises(TypeError, match="1-D uint8"):
        tok.encode(np.array([65, 67], dtype=np.int32))
    with pytest.raises(TypeError, match="str or bytes"):
        tok.encode(12345)  # type: ignore[arg-type]


def test_empty_sequence(tok: CharTokenizer) -> None:
    ids = tok.encode("")
    assert ids.shape == (0,) and ids.dtype == np.int64
    assert tok.encode("", add_eos=True).tolist() == [tok.SEP_ID]
    assert tok.decode(ids) == ""
    with pytest.raises(ValueError, match="empty list"):
        tok.batch_encode([])


def test_round_trip_random_dna(tok: CharTokenizer) -> None:
    rng = np.random.default_rng(0)
    for n in (1, 7, 1000, 10_001):
        seq = random_dna(rng, n)
        ids = tok.encode(seq)
        assert ids.size == n
        assert tok.decode(ids) == seq
        assert tok.decode(torch.from_numpy(ids)) == seq
        assert tok.decode(ids.tolist()) == seq
    # Lowercase input decodes uppercase under the default policy.
    assert tok.decode(tok.encode("acgtnACGTN")) == "ACGTNACGTN"


def test_decode_specials(tok: CharTokenizer) -> None:
    ids = [tok.CLS_ID, 7, 8, tok.MASK_ID, 9, tok.SEP_ID, tok.PAD_ID]
    assert tok.decode(ids) == "[CLS]AC[MASK]G[SEP][PAD]"
    assert tok.decode(ids, skip_special_tokens=True) == "ACG"
    assert tok.decode(np.array([tok.PAD_ID] * 3)) == "[PAD][PAD][PAD]"
    assert tok.batch_decode(np.array([[4, 7], [8, 1]]), skip_special_tokens=True) == ["A", "C"]
    assert tok.batch_decode([[7, 8], [9]]) == ["AC", "G"]
    with pytest.raises(ValueError, match="id 13 at position 1"):
        tok.decode([7, 13])
    with pytest.raises(ValueError, match="id -100 at position 0"):
        tok.decode([-100, 7])
    with pytest.raises(ValueError, match="batch_decode"):
        tok.decode(np.zeros((2, 3), dtype=np.int64))


@pytest.mark.parametrize(
    ("mode", "expected"),
    [("upper", [7, 8, 9, 10, 11]), ("unk", [6, 6, 6, 6, 6])],
)
def test_lowercase_policy(mode: str, expected: list[int]) -> None:
    tok = CharTokenizer(lowercase=mode)
    assert tok.encode("acgtn").tolist() == expected
    assert tok.encode("ACGTN").tolist() == [7, 8, 9, 10, 11]
    # Soft-masked run in the middle of an uppercase sequence.
    assert tok.encode("AcG").tolist() == [7, expected[1], 9]


def test_lowercase_error_names_position() -> None:
    tok = CharTokenizer(lowercase="error")
    assert tok.encode("ACGTN").tolist() == [7, 8, 9, 10, 11]
    with pytest.raises(ValueError, match=r"lowercase .*'g' at position 3"):
        tok.encode("ACGgT")
    with pytest.raises(ValueError, match=r"lowercase .*'r' at position 1"):
        tok.encode("Ar")


def test_iupac_policy() -> None:
    codes = "RYKMSWBDHV"
    assert CharTokenizer().encode(codes).tolist() == [11] * 10
    assert CharTokenizer().encode(codes.lower()).tolist() == [11] * 10
    assert CharTokenizer(iupac="unk").encode(codes).tolist() == [6] * 10
    assert CharTokenizer(iupac="unk").encode(codes.lower()).tolist() == [6] * 10
    # Official behaviour: every lowercase letter is UNK, IUPAC or not.
    assert CharTokenizer(lowercase="unk", iupac="n").encode("Rr").tolist() == [11, 6]
    with pytest.raises(ValueError, match=r"IUPAC .*'Y' at position 2"):
        CharTokenizer(iupac="error").encode("ACYT")
    with pytest.raises(ValueError, match=r"IUPAC .*'y' at position 2"):
        CharTokenizer(iupac="error").encode("ACyT")
    with pytest.raises(ValueError, match=r"lowercase .*'y' at position 0"):
        CharTokenizer(lowercase="error").encode("y")


def test_rna_policy() -> None:
    with pytest.raises(ValueError, match=r"RNA base 'U' at position 3"):
        CharTokenizer().encode("ACGU")
    with pytest.raises(ValueError, match=r"RNA base 'u' at position 0"):
        CharTokenizer().encode("uAC")
    assert CharTokenizer(rna="t").encode("ACGUu").tolist() == [7, 8, 9, 10, 10]


@pytest.mark.parametrize(
    ("seq", "char", "pos"),
    [
        ("ACG7T", "'7'", 3),
        (">chr1", "'>'", 0),
        ("ACG T", "' '", 3),
        ("AC\tGT", r"'\\t'", 2),
        ("ACGT\nACGT", r"'\\n'", 4),
        ("ACGT\r", r"'\\r'", 4),
        ("AC-GT", "'-'", 2),
        ("ACGT.", "'.'", 4),
        ("[CLS]ACGT", r"'\['", 0),
        ("ACGTé", "'é'", 4),
        ("AC\u2028GT", r"'\\u2028'", 2),
    ],
)
def test_bad_characters_name_position(tok: CharTokenizer, seq: str, char: str, pos: int) -> None:
    with pytest.raises(ValueError, match=rf"{char} at position {pos}\b"):
        tok.encode(seq)


def test_bad_bytes_name_position(tok: CharTokenizer) -> None:
    with pytest.raises(ValueError, match=r"non-ASCII byte 0xC3 at position 2"):
        tok.encode("ACé".encode())
    # Bad characters are rejected under every policy, including the official-like one.
    with pytest.raises(ValueError, match=r"'1' at position 1"):
        CharTokenizer(lowercase="unk", iupac="unk").encode("A1")


def test_encode_one_megabase_is_fast(tok: CharTokenizer) -> None:
    rng = np.random.default_rng(1)
    seq = random_dna(rng, 1_000_000, "ACGTacgtN")
    start = time.perf_counter()
    ids = tok.encode(seq)
    text = tok.decode(ids)
    elapsed = time.perf_counter() - start
    assert ids.size == 1_000_000
    assert text == seq.upper()
    # Generous bound: a per-character Python loop takes about this long; the LUT takes ms.
    assert elapsed < 1.0, f"encode+decode of 1 Mb took {elapsed:.3f} s"


@pytest.mark.parametrize("side", ["left", "right"])
def test_batch_encode_padding_and_mask(side: str) -> None:
    tok = CharTokenizer(padding_side=side)
    seqs = ["ACGT", "GA", "", "TTTTT"]
    out = tok.batch_encode(seqs)
    ids, mask = out["input_ids"], out["attention_mask"]
    assert ids.shape == mask.shape == (4, 5)
    assert ids.dtype == mask.dtype == np.int64
    for row, seq in enumerate(seqs):
        assert mask[row].sum() == len(seq)
        assert (ids[row][mask[row] == 0] == tok.PAD_ID).all()
        assert tok.decode(ids[row][mask[row] == 1]) == seq
        real = np.flatnonzero(mask[row])
        if real.size:
            # Real tokens are one contiguous run against the non-padding side.
            assert (np.diff(real) == 1).all()
            assert real[-1] == 4 if side == "left" else real[0] == 0
    # The padding side can be overridden per call.
    other = "right" if side == "left" else "left"
    flipped = tok.batch_encode(seqs, padding_side=other)
    assert (flipped["attention_mask"] == mask[:, ::-1]).all()


def test_batch_encode_max_length_and_eos(tok: CharTokenizer) -> None:
    out = tok.batch_encode(["AC", "G"], max_length=4, add_eos=True)
    assert out["input_ids"].tolist() == [[4, 7, 8, 1], [4, 4, 9, 1]]
    assert out["attention_mask"].tolist() == [[0, 1, 1, 1], [0, 0, 1, 1]]
    right = tok.batch_encode(["AC", "G"], max_length=4, add_eos=True, padding_side="right")
    assert right["input_ids"].tolist() == [[7, 8, 1, 4], [9, 1, 4, 4]]
    assert right["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 0, 0]]
    with pytest.raises(ValueError, match="max_length must be"):
        tok.batch_encode(["A"], max_length=1, add_eos=True)


def test_batch_encode_truncation(tok: CharTokenizer) -> None:
    seqs = ["ACGTA", "CG"]
    with pytest.raises(ValueError, match=r"sequence 0 has 5 tokens but max_length is 3"):
        tok.batch_encode(seqs, max_length=3)
    with pytest.raises(ValueError, match=r"sequence 0 has 6 tokens"):
        tok.batch_encode(seqs, max_length=5, add_eos=True)
    left = tok.batch_encode(seqs, max_length=3, truncation="left")
    assert [tok.decode(r, skip_special_tokens=True) for r in left["input_ids"]] == ["GTA", "CG"]
    right = tok.batch_encode(seqs, max_length=3, truncation="right")
    assert [tok.decode(r, skip_special_tokens=True) for r in right["input_ids"]] == ["ACG", "CG"]
    # [SEP] survives truncation on either side.
    eos_left = tok.batch_encode(seqs, max_length=3, truncation="left", add_eos=True)
    assert tok.decode(eos_left["input_ids"][0]) == "TA[SEP]"
    eos_right = tok.batch_encode(seqs, max_length=3, truncation="right", add_eos=True)
    assert tok.decode(eos_right["input_ids"][0]) == "AC[SEP]"
    assert eos_right["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 1]]


def test_batch_encode_errors(tok: CharTokenizer) -> None:
    with pytest.raises(ValueError, match=r"sequence 1: invalid character '>' at position 0"):
        tok.batch_encode(["ACGT", ">seq"])
    with pytest.raises(TypeError, match="list of sequences"):
        tok.batch_encode("ACGT")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="truncation"):
        tok.batch_encode(["A"], truncation="middle")
    with pytest.raises(ValueError, match="padding_side"):
        tok.batch_encode(["A"], padding_side="center")


def test_reverse_complement_known_value(tok: CharTokenizer) -> None:
    rc = tok.reverse_complement(tok.encode("ACGTN"))
    assert tok.decode(rc) == "NACGT"
    assert tok.decode(tok.reverse_complement(tok.encode("AACGTTTG"))) == "CAAACGTT"
    assert tok.reverse_complement([7, 8, 11]) == [11, 9, 10]
    assert tok.decode(tok.complement_ids(tok.encode("ACGTN"))) == "TGCAN"


def test_reverse_complement_involution_and_reference(tok: CharTokenizer) -> None:
    rng = np.random.default_rng(2)
    ids = rng.integers(0, 12, size=(3, 257))  # includes N and every special token
    rc = tok.reverse_complement(ids)
    assert rc.shape == ids.shape and rc.dtype == ids.dtype
    assert (tok.reverse_complement(rc) == ids).all()
    assert not (rc == ids).all()
    # Per-character reference on one row: complement letters, keep specials, reverse.
    ref = [COMPLEMENT.get(t, t) for t in [tok.id_to_token[i] for i in ids[0]]][::-1]
    assert tok.decode(rc[0]) == "".join(ref)
    # Specials are fixed points of the complement.
    specials = np.arange(tok.num_special_tokens)
    assert (tok.complement_ids(specials) == specials).all()


def test_reverse_complement_torch(tok: CharTokenizer) -> None:
    rng = np.random.default_rng(3)
    ids = rng.integers(0, 12, size=(2, 3, 50))
    t = torch.from_numpy(ids).to(torch.int32)
    rc = tok.reverse_complement(t)
    assert isinstance(rc, torch.Tensor) and rc.dtype == torch.int32 and rc.shape == t.shape
    assert (rc.numpy() == tok.reverse_complement(ids)).all()
    assert torch.equal(tok.reverse_complement(rc), t)
    with pytest.raises(ValueError, match="id 16"):
        tok.reverse_complement(torch.tensor([7, 16]))
    with pytest.raises(ValueError, match="id -1"):
        tok.reverse_complement(np.array([-1, 7]))


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_reverse_complement_padded_keeps_padding(side: str, backend: str) -> None:
    tok = CharTokenizer(padding_side=side)
    seqs = ["ACGTN", "AAC", "", "G"]
    batch = tok.batch_encode(seqs)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    if backend == "torch":
        ids, mask = torch.from_numpy(ids), torch.from_numpy(mask)
    rc_ids, rc_mask = tok.reverse_complement_padded(ids, mask)
    assert type(rc_ids) is type(ids) and rc_mask is mask
    expected = tok.batch_encode([tok.decode(tok.reverse_complement(tok.encode(s))) for s in seqs])
    assert np.asarray(rc_ids).tolist() == expected["input_ids"].tolist()
    again, _ = tok.reverse_complement_padded(rc_ids, mask)
    assert np.asarray(again).tolist() == np.asarray(ids).tolist()


def test_reverse_complement_padded_rejects_holes(tok: CharTokenizer) -> None:
    ids = np.array([[7, 4, 8]])
    with pytest.raises(ValueError, match="contiguous"):
        tok.reverse_complement_padded(ids, np.array([[1, 0, 1]]))
    with pytest.raises(ValueError, match="contiguous"):
        tok.reverse_complement_padded(torch.tensor(ids), torch.tensor([[1, 0, 1]]))
    with pytest.raises(ValueError, match=r"\(B, L\)"):
        tok.reverse_complement_padded(ids, np.array([[1, 1]]))


def test_settings_round_trip() -> None:
    tok = CharTokenizer(lowercase="unk", iupac="error", padding_side="right", rna="t")
    d = tok.to_dict()
    assert d == {"lowercase": "unk", "iupac": "error", "padding_side": "right", "rna": "t"}
    again = CharTokenizer.from_dict(d)
    assert again == tok and again.to_dict() == d
    assert again.encode("acU").tolist() == tok.encode("acU").tolist() == [6, 6, 10]
    assert CharTokenizer.from_dict({}) == CharTokenizer()
    with pytest.raises(ValueError, match=r"unknown CharTokenizer setting\(s\) \['lower_case'\]"):
        CharTokenizer.from_dict({"lower_case": "upper"})


@pytest.mark.parametrize(
    "kwargs",
    [{"lowercase": "lower"}, {"iupac": "x"}, {"padding_side": "middle"}, {"rna": "u"}],
)
def test_bad_settings_rejected(kwargs: dict[str, str]) -> None:
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=rf"{name} must be one of"):
        CharTokenizer(**kwargs)
