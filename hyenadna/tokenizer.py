"""Character-level DNA tokenizer with the ids of the released HyenaDNA models.

Vocabulary (fixed, so the embeddings of the released checkpoints line up):

    [CLS]=0 [SEP]=1 [BOS]=2 [MASK]=3 [PAD]=4 [RESERVED]=5 [UNK]=6 A=7 C=8 G=9 T=10 N=11

``vocab_size`` is 12; the model pads its embedding to 16 rows. As in the official
tokenizer, end-of-sequence is ``[SEP]`` (id 1) and padding defaults to the left, because
the model is causal and the last position should be a real token.

Encoding is vectorised: the sequence becomes a ``uint8`` array and one 256-entry lookup
table maps every byte to an id, so a 1 Mb chromosome slice encodes in milliseconds.

Character policy (each choice is a constructor argument; the defaults are marked):

* ``A C G T N`` (uppercase) map to 7..11.
* Lowercase ``a c g t n`` and lowercase IUPAC codes -- ``lowercase=``:
    - ``"upper"`` (default): read as the uppercase base. Reference genomes such as hg38
      soft-mask repeats in lowercase (about half of hg38); they are real, known bases.
      The official tokenizer looks characters up case-sensitively and silently maps them
      to ``[UNK]``, which destroys half the genome without any warning.
    - ``"unk"``: map to ``[UNK]`` (id 6), reproducing the official behaviour exactly.
    - ``"error"``: raise ``ValueError`` naming the position.
* IUPAC ambiguity codes ``R Y K M S W B D H V`` -- ``iupac=``:
    - ``"n"`` (default): map to ``N``. They are ambiguous bases; N is the vocabulary's
      "unknown base" and the only token the model has a meaning for at that position.
    - ``"unk"``: map to ``[UNK]`` (the official behaviour).
    - ``"error"``: raise ``ValueError`` naming the position.
* RNA ``U``/``u`` -- ``rna=``:
    - ``"error"`` (default): raise. The models were trained on DNA; a U almost always
      means a wrong file, and converting it silently would hide that.
    - ``"t"``: read ``U`` as ``T`` (for deliberately supplied RNA sequences).
* Anything else -- digits, ``>``, whitespace (including a newline inside a sequence),
  ``-``, ``.``, ``*``, brackets, non-ASCII -- raises ``ValueError`` naming the character and
  its 0-based position. The official tokenizer maps these to ``[UNK]``, which turns a FASTA
  header or line breaks into silent noise. Special tokens are never parsed from text; add
  them by id (e.g. ``add_eos=True`` appends ``[SEP]``).

Reverse complement works on ids (A<->T, C<->G, N->N, special tokens unchanged, order
reversed), for 1-D and batched numpy arrays and torch tensors; ``reverse_complement_padded``
keeps a batch's padding on its side.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

_LOWERCASE_MODES = ("upper", "unk", "error")
_IUPAC_MODES = ("n", "unk", "error")
_RNA_MODES = ("error", "t")
_SIDES = ("left", "right")
_TRUNCATION_MODES = ("error", "left", "right")

_IUPAC_CODES = "RYKMSWBDHV"

# Negative lookup-table entries mark rejected bytes; each kind gets its own error message.
_BAD_CHAR = -1
_BAD_LOWERCASE = -2
_BAD_IUPAC = -3
_BAD_RNA = -4

# tokenizer_config.json key holding `CharTokenizer.to_dict` (transformers keeps unknown keys as is).
HF_SETTINGS_KEY = "hyenadna_char_tokenizer"

# Size of the id lookup tables: the model's padded embedding (12 -> multiple of 8).
_ID_TABLE_SIZE = 16


def _char_repr(code: int) -> str:
    """Readable name of one byte for error messages."""
    if code >= 128:
        return f"non-ASCII byte 0x{code:02X}"
    return f"character {chr(code)!r}"


class CharTokenizer:
    """Character-level DNA tokenizer matching the released HyenaDNA vocabulary."""

    CLS_ID: ClassVar[int] = 0
    SEP_ID: ClassVar[int] = 1
    BOS_ID: ClassVar[int] = 2
    MASK_ID: ClassVar[int] = 3
    PAD_ID: ClassVar[int] = 4
    RESERVED_ID: ClassVar[int] = 5
    UNK_ID: ClassVar[int] = 6
    A_ID: ClassVar[int] = 7
    C_ID: ClassVar[int] = 8
    G_ID: ClassVar[int] = 9
    T_ID: ClassVar[int] = 10
    N_ID: ClassVar[int] = 11
    vocab_size: ClassVar[int] = 12

    id_to_token: ClassVar[tuple[str, ...]] = (
        "[CLS]", "[SEP]", "[BOS]", "[MASK]", "[PAD]", "[RESERVED]", "[UNK]",
        "A", "C", "G", "T", "N",
    )  # fmt: skip
    token_to_id: ClassVar[dict[str, int]] = {tok: i for i, tok in enumerate(id_to_token)}
    # Ids below this are special tokens; A, C, G, T, N come after them.
    num_special_tokens: ClassVar[int] = 7

    def __init__(
        self,
        lowercase: str = "upper",
        iupac: str = "n",
        padding_side: str = "left",
        rna: str = "error",
    ) -> None:
        _check_choice("lowercase", lowercase, _LOWERCASE_MODES)
        _check_choice("iupac", iupac, _IUPAC_MODES)
        _check_choice("padding_side", padding_side, _SIDES)
        _check_choice("rna", rna, _RNA_MODES)
        self.lowercase = lowercase
        self.iupac = iupac
        self.padding_side = padding_side
        self.rna = rna
        self._lut = self._build_encode_table()

    # ----------------------------------------------------------------- properties
    @property
    def cls_token_id(self) -> int:
        """Id of ``[CLS]``."""
        return self.CLS_ID

    @property
    def sep_token_id(self) -> int:
        """Id of ``[SEP]``."""
        return self.SEP_ID

    @property
    def eos_token_id(self) -> int:
        """Id of the end-of-sequence token, ``[SEP]`` as in the official tokenizer."""
        return self.SEP_ID

    @property
    def bos_token_id(self) -> int:
        """Id of ``[BOS]``."""
        return self.BOS_ID

    @property
    def mask_token_id(self) -> int:
        """Id of ``[MASK]``."""
        return self.MASK_ID

    @property
    def pad_token_id(self) -> int:
        """Id of ``[PAD]``."""
        return self.PAD_ID

    @property
    def unk_token_id(self) -> int:
        """Id of ``[UNK]``."""
        return self.UNK_ID

    # ------------------------------------------------------------------- encoding
    def _build_encode_table(self) -> np.ndarray:
        """Byte -> id table (int8); negative entries are the rejection codes."""
        lut = np.full(256, _BAD_CHAR, dtype=np.int8)
        upper: dict[str, int] = {b: self.token_to_id[b] for b in "ACGTN"}
        for code in _IUPAC_CODES:
            upper[code] = {"n": self.N_ID, "unk": self.UNK_ID, "error": _BAD_IUPAC}[self.iupac]
        upper["U"] = {"error": _BAD_RNA, "t": self.T_ID}[self.rna]
        for char, value in upper.items():
            lut[ord(char)] = value
            if self.lowercase == "upper":
                lut[ord(char.lower())] = value
            elif self.lowercase == "unk":
                lut[ord(char.lower())] = self.UNK_ID
            else:
                lut[ord(char.lower())] = _BAD_LOWERCASE
        return lut

    @staticmethod
    def _to_bytes(seq: str | bytes | bytearray | np.ndarray) -> np.ndarray:
        """View a sequence as a 1-D uint8 array of ASCII codes."""
        if isinstance(seq, str):
            try:
                raw = seq.encode("ascii")
            except UnicodeEncodeError as err:
                raise ValueError(
                    f"non-ASCII character {seq[err.start]!r} at position {err.start}; "
                    "a DNA sequence may only contain A, C, G, T, N and IUPAC codes"
                ) from None
            return np.frombuffer(raw, dtype=np.uint8)
        if isinstance(seq, (bytes, bytearray, memoryview)):
            return np.frombuffer(seq, dtype=np.uint8)
        if isinstance(seq, np.ndarray):
            if seq.dtype == np.uint8 and seq.ndim == 1:
                return seq
            if seq.dtype.kind == "S" and seq.dtype.itemsize == 1 and seq.ndim == 1:
                return seq.view(np.uint8)
            raise TypeError(
                "a numpy sequence must be a 1-D uint8 array of ASCII codes (or dtype 'S1'), "
                f"got dtype {seq.dtype} with shape {seq.shape}"
            )
        raise TypeError(f"cannot encode an object of type {type(seq).__name__}; pass str or bytes")

    def encode(self, seq: str | bytes | np.ndarray, add_eos: bool = False) -> np.ndarray:
        """Encode one sequence to a 1-D int64 id array, appending ``[SEP]`` if ``add_eos``."""
        codes = self._to_bytes(seq)
        ids8 = self._lut[codes]
        if ids8.size and ids8.min() < 0:
            self._raise_bad(codes, ids8)
        ids = np.empty(ids8.size + int(add_eos), dtype=np.int64)
        ids[: ids8.size] = ids8
        if add_eos:
            ids[-1] = self.SEP_ID
        return ids

    def _raise_bad(self, codes: np.ndarray, ids8: np.ndarray) -> None:
        """Raise a ValueError describing the first rejected byte."""
        pos = int(np.argmax(ids8 < 0))
        code = int(codes[pos])
        kind = int(ids8[pos])
        what = _char_repr(code)
        if kind == _BAD_LOWERCASE:
            raise ValueError(
                f"lowercase (soft-masked) base {chr(code)!r} at position {pos} is rejected "
                "because lowercase='error'; use lowercase='upper' to read it as a base"
            )
        if kind == _BAD_IUPAC:
            raise ValueError(
                f"IUPAC ambiguity code {chr(code)!r} at position {pos} is rejected because "
                "iupac='error'; use iupac='n' to read it as N"
            )
        if kind == _BAD_RNA:
            raise ValueError(
                f"RNA base {chr(code)!r} at position {pos} in a DNA sequence; "
                "use rna='t' to read U as T"
            )
        hint = ""
        if chr(code) in "> \t\r\n":
            hint = " (a FASTA header or line break? pass the bare sequence, e.g. read via pyfaidx)"
        raise ValueError(
            f"invalid {what} at position {pos}; a DNA sequence may only contain "
            f"A, C, G, T, N and IUPAC codes{hint}"
        )

    def batch_encode(
        self,
        seqs: Sequence[str | bytes | np.ndarray],
        max_length: int | None = None,
        padding_side: str | None = None,
        add_eos: bool = False,
        truncation: str = "error",
    ) -> dict[str, np.ndarray]:
        """Encode and pad a batch: ``{"input_ids": (B, L), "attention_mask": (B, L)}``, int64.

        ``L`` is ``max_length`` if given, else the longest encoded sequence (``[SEP]``
        included). Sequences longer than ``max_length`` raise with ``truncation="error"``;
        ``"left"`` drops tokens from the start (keeps the end), ``"right"`` drops them from
        the end. A ``[SEP]`` added by ``add_eos`` is kept when truncating.
        """
        if isinstance(seqs, (str, bytes)):
            raise TypeError("batch_encode takes a list of sequences; use encode for a single one")
        if len(seqs) == 0:
            raise ValueError("batch_encode got an empty list of sequences")
        side = self.padding_side if padding_side is None else padding_side
        _check_choice("padding_side", side, _SIDES)
        _check_choice("truncation", truncation, _TRUNCATION_MODES)
        if max_length is not None and max_length < 1 + int(add_eos):
            raise ValueError(f"max_length must be >= {1 + int(add_eos)}, got {max_length}")

        encoded: list[np.ndarray] = []
        for i, seq in enumerate(seqs):
            try:
                ids = self.encode(seq)
            except ValueError as err:
                raise ValueError(f"sequence {i}: {err}") from None
            n = ids.size + int(add_eos)
            if max_length is not None and n > max_length:
                if truncation == "error":
                    raise ValueError(
                        f"sequence {i} has {n} tokens but max_length is {max_length}; "
                        "pass truncation='left' (keep the end) or 'right' (keep the start)"
                    )
                keep = max_length - int(add_eos)
                ids = ids[ids.size - keep :] if truncation == "left" else ids[:keep]
            if add_eos:
                ids = np.append(ids, np.int64(self.SEP_ID))
            encoded.append(ids)

        length = max_length if max_length is not None else max(ids.size for ids in encoded)
        input_ids = np.full((len(encoded), length), self.PAD_ID, dtype=np.int64)
        attention_mask = np.zeros((len(encoded), length), dtype=np.int64)
        for row, ids in enumerate(encoded):
            start = length - ids.size if side == "left" else 0
            input_ids[row, start : start + ids.size] = ids
            attention_mask[row, start : start + ids.size] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    # ------------------------------------------------------------------- decoding
    def decode(self, ids: Any, skip_special_tokens: bool = False) -> str:
        """Decode a 1-D id sequence; specials become ``[CLS]``-style names unless skipped."""
        arr = _as_numpy_ids(ids)
        if arr.ndim != 1:
            raise ValueError(
                f"decode takes a 1-D id sequence, got shape {arr.shape}; use batch_decode"
            )
        bad = (arr < 0) | (arr >= self.vocab_size)
        if bad.any():
            pos = int(np.argmax(bad))
            raise ValueError(
                f"id {int(arr[pos])} at position {pos} is outside the vocabulary "
                f"(0..{self.vocab_size - 1})"
            )
        letters = _DECODE_LETTERS[arr]
        special = np.flatnonzero(arr < self.num_special_tokens)
        if special.size == 0:
            return letters.tobytes().decode("ascii")
        if skip_special_tokens:
            return letters[arr >= self.num_special_tokens].tobytes().decode("ascii")
        # Only the (few) special positions are visited in Python; base runs stay vectorised.
        parts: list[str] = []
        prev = 0
        for pos in special.tolist():
            parts.append(letters[prev:pos].tobytes().decode("ascii"))
            parts.append(self.id_to_token[int(arr[pos])])
            prev = pos + 1
        parts.append(letters[prev:].tobytes().decode("ascii"))
        return "".join(parts)

    def batch_decode(self, ids: Any, skip_special_tokens: bool = False) -> list[str]:
        """Decode each row of a (B, L) id array or a list of id sequences."""
        if isinstance(ids, (list, tuple)):
            return [self.decode(row, skip_special_tokens) for row in ids]
        arr = _as_numpy_ids(ids)
        if arr.ndim != 2:
            raise ValueError(f"batch_decode takes a (B, L) id array, got shape {arr.shape}")
        return [self.decode(row, skip_special_tokens) for row in arr]

    # --------------------------------------------------------- reverse complement
    def complement_ids(self, ids: Any) -> Any:
        """Complement ids in place order (A<->T, C<->G, N and specials unchanged); same type."""
        return _apply_table(ids, _COMPLEMENT, flip=False)

    def reverse_complement(self, ids: Any) -> Any:
        """Reverse complement along the last dim (numpy, torch or list); same type back."""
        return _apply_table(ids, _COMPLEMENT, flip=True)

    def reverse_complement_padded(self, input_ids: Any, attention_mask: Any) -> tuple[Any, Any]:
        """Reverse complement each row's real tokens, leaving the padding where it was.

        ``input_ids`` and ``attention_mask`` are (B, L) numpy arrays or torch tensors; each
        row's real tokens must be contiguous (left or right padding). The mask is unchanged
        and returned for convenience. Special tokens inside the real run move with it, so a
        trailing ``[SEP]`` ends up first: reverse-complement before adding it.
        """
        if tuple(input_ids.shape) != tuple(attention_mask.shape) or input_ids.ndim != 2:
            raise ValueError(
                "input_ids and attention_mask must both be (B, L), "
                f"got {tuple(input_ids.shape)} and {tuple(attention_mask.shape)}"
            )
        if input_ids.shape[0] * input_ids.shape[1] == 0:
            return input_ids, attention_mask
        _check_id_range(int(input_ids.min()), int(input_ids.max()))
        contiguous_error = (
            "attention_mask rows must be one contiguous run of 1s (left or right padding)"
        )
        if _is_torch(input_ids):
            import torch

            mask = attention_mask.to(torch.bool)
            pos = torch.arange(input_ids.shape[-1], device=input_ids.device)
            count = mask.sum(-1, keepdim=True)
            start = mask.to(torch.int64).argmax(-1, keepdim=True)
            if not torch.equal((pos >= start) & (pos < start + count), mask):
                raise ValueError(contiguous_error)
            # Real tokens fill [start, start + count); each takes the token mirrored in that run.
            index = torch.where(mask, 2 * start + count - 1 - pos, pos)
            table = torch.as_tensor(_COMPLEMENT, device=input_ids.device, dtype=input_ids.dtype)
            out = torch.where(mask, table[torch.gather(input_ids, -1, index)], input_ids)
            return out, attention_mask
        ids = np.asarray(input_ids)
        mask = np.asarray(attention_mask).astype(bool)
        pos = np.arange(ids.shape[-1])
        count = mask.sum(-1, keepdims=True)
        start = mask.argmax(-1)[:, None]
        if not np.array_equal((pos >= start) & (pos < start + count), mask):
            raise ValueError(contiguous_error)
        index = np.where(mask, 2 * start + count - 1 - pos, pos)
        flipped = np.take_along_axis(ids, index, axis=-1)
        out = np.where(mask, _COMPLEMENT[flipped], ids).astype(ids.dtype, copy=False)
        return out, attention_mask

    # ------------------------------------------------------------- serialisation
    def to_hf_tokenizer(self) -> Any:
        """This tokenizer as a `tokenizers.Tokenizer` (what tokenizer.json holds): the same ids.

        Character-level WordLevel over our vocabulary; a normalizer rewrites each character our
        lookup table maps to another token (lowercase, IUPAC codes, U) per this tokenizer's
        settings. What we refuse (digits, '>', ...; 'error' settings) becomes [UNK] there, as the
        library cannot raise; and the special-token names in text ('[CLS]') are parsed as such.
        """
        from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

        tok = Tokenizer(models.WordLevel(dict(self.token_to_id), unk_token="[UNK]"))
        rewrites = [normalizers.Replace(chr(code), self.id_to_token[int(i)]) for code, i in enumerate(self._lut[:128])
                    if i >= self.num_special_tokens and chr(code) != self.id_to_token[int(i)]]
        tok.normalizer = normalizers.Sequence(rewrites)
        tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")  # one token per character
        tok.decoder = decoders.Fuse()
        tok.add_special_tokens([AddedToken(t, special=True) for t in self.id_to_token[: self.num_special_tokens]])
        return tok

    def to_hf_files(self, model_max_length: int) -> dict[str, str]:
        """tokenizer.json and tokenizer_config.json for ``transformers.AutoTokenizer`` (a fast tokenizer).

        tokenizer_config.json also keeps this tokenizer's settings (`to_dict`) under
        ``hyenadna_char_tokenizer``, from which `from_hf_config` rebuilds it exactly.
        """
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": model_max_length,
                  "padding_side": self.padding_side, "truncation_side": "left",
                  "bos_token": "[BOS]", "eos_token": "[SEP]", "sep_token": "[SEP]", "cls_token": "[CLS]",
                  "pad_token": "[PAD]", "mask_token": "[MASK]", "unk_token": "[UNK]",
                  "clean_up_tokenization_spaces": False, HF_SETTINGS_KEY: self.to_dict()}
        return {"tokenizer.json": self.to_hf_tokenizer().to_str(pretty=True) + "\n",
                "tokenizer_config.json": json.dumps(config, indent=2) + "\n"}

    @classmethod
    def from_hf_config(cls, tokenizer_config: dict[str, Any]) -> CharTokenizer | None:
        """The tokenizer a tokenizer_config.json written by `to_hf_files` describes; None for another's."""
        settings = tokenizer_config.get(HF_SETTINGS_KEY)
        return None if settings is None else cls.from_dict(settings)

    def to_dict(self) -> dict[str, str]:
        """Settings needed to rebuild this tokenizer (for save_pretrained)."""
        return {
            "lowercase": self.lowercase,
            "iupac": self.iupac,
            "padding_side": self.padding_side,
            "rna": self.rna,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CharTokenizer:
        """Rebuild a tokenizer from ``to_dict`` output; unknown keys are an error."""
        known = {"lowercase", "iupac", "padding_side", "rna"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(
                f"unknown CharTokenizer setting(s) {unknown}; known settings are {sorted(known)}"
            )
        return cls(**d)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items())
        return f"CharTokenizer({args})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CharTokenizer) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(tuple(self.to_dict().items()))


# id -> ASCII letter; specials get '?' but are never emitted as such (decode replaces them).
_DECODE_LETTERS = np.frombuffer(b"???????ACGTN", dtype=np.uint8)

# id -> complementary id over the model's 16 embedding rows; specials and 12..15 map to themselves.
_COMPLEMENT = np.arange(_ID_TABLE_SIZE, dtype=np.int64)
_COMPLEMENT[[CharTokenizer.A_ID, CharTokenizer.T_ID]] = [CharTokenizer.T_ID, CharTokenizer.A_ID]
_COMPLEMENT[[CharTokenizer.C_ID, CharTokenizer.G_ID]] = [CharTokenizer.G_ID, CharTokenizer.C_ID]


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    """Raise a ValueError unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


def _is_torch(x: object) -> bool:
    """True for a torch tensor, without importing torch for numpy-only users."""
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")


def _as_numpy_ids(ids: Any) -> np.ndarray:
    """Integer numpy view of ids given as numpy, torch or a (nested) list."""
    arr = ids.detach().cpu().numpy() if _is_torch(ids) else np.asarray(ids)
    if arr.size and arr.dtype.kind not in "iu":
        raise TypeError(f"ids must be integers, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def _check_id_range(lo: int, hi: int) -> None:
    """Reject ids that index outside the 16-row id tables."""
    if lo < 0 or hi >= _ID_TABLE_SIZE:
        bad = lo if lo < 0 else hi
        raise ValueError(f"id {bad} is outside the model's id range 0..{_ID_TABLE_SIZE - 1}")


def _apply_table(ids: Any, table: np.ndarray, flip: bool) -> Any:
    """Map ids through ``table`` (and reverse the last dim if ``flip``), keeping the type."""
    if _is_torch(ids):
        import torch

        if ids.numel():
            _check_id_range(int(ids.min()), int(ids.max()))
        out = torch.as_tensor(table, device=ids.device, dtype=ids.dtype)[ids]
        return out.flip(-1) if flip else out
    if isinstance(ids, (list, tuple)):
        return type(ids)(_apply_table(np.asarray(ids, dtype=np.int64), table, flip).tolist())
    arr = np.asarray(ids)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"ids must be integers, got dtype {arr.dtype}")
    if arr.size:
        _check_id_range(int(arr.min()), int(arr.max()))
    out = table[arr].astype(arr.dtype, copy=False)
    return np.ascontiguousarray(out[..., ::-1]) if flip else out
