"""SIB-200 data: reading, tokenization with a length cap, and length-grouped batches.

Sources: a local folder in the upstream layout (`<dir>/data/annotated/<lang>/<split>.tsv`, or
`<dir>/<lang>/<split>.tsv`), given by --data-dir or XPE_FAST_DATA_DIR, or the Hugging Face
dataset `Davlan/sib200` (needs the `datasets` package and a network). The TSVs are read with
a real CSV parser: 7,688 of their texts are quoted.
"""

from __future__ import annotations

import csv
import io
import os
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import DataError
from .textfile import read_text

LABELS = (
    "science/technology",
    "travel",
    "politics",
    "sports",
    "health",
    "entertainment",
    "geography",
)
LABEL_TO_ID = {name: i for i, name in enumerate(LABELS)}
SPLITS = ("train", "dev", "test")
HUB_DATASET = "Davlan/sib200"
ENV_DATA_DIR = "XPE_FAST_DATA_DIR"


@dataclass(frozen=True)
class Example:
    index_id: int
    label: int
    text: str


def default_data_source() -> str:
    """The data source when none is given: $XPE_FAST_DATA_DIR, else a `shared/sib200` copy
    beside or above the working directory, else the hub dataset id."""
    env = os.environ.get(ENV_DATA_DIR)
    if env:
        return env
    for cand in LOCAL_CANDIDATES:
        if Path(cand).is_dir():
            return str(Path(cand).resolve())
    return HUB_DATASET


LOCAL_CANDIDATES = ("shared/sib200", "../shared/sib200")


class SIB200:
    """Reader of SIB-200 splits from a local folder or the hub, with a per-split cache."""

    labels = list(LABELS)
    own = False

    def __init__(self, source: str | os.PathLike | None = None):
        defaulted = source is None
        source = str(source) if source is not None else default_data_source()
        self.source = source
        self._cache: dict[tuple[str, str], list[Example]] = {}
        path = Path(source).expanduser()
        if source.lower() == HUB_DATASET.lower() and not path.exists():
            self.root = None
            self.hub = True
            try:
                import datasets  # noqa: F401
            except ImportError:
                where = (
                    f"no local SIB-200 copy was found (${ENV_DATA_DIR} is unset; looked in "
                    f"{', '.join(LOCAL_CANDIDATES)} under {Path.cwd()}), and "
                    if defaulted
                    else ""
                )
                raise DataError(
                    f"{where}reading {HUB_DATASET} from the hub needs "
                    "`pip install datasets` and a network; or pass --data-dir "
                    "with a local copy"
                ) from None
        elif path.exists() or os.sep in source or source.startswith("."):
            if not path.is_dir():
                raise DataError(f"data folder {source} does not exist or is not a folder")
            root = path / "data" / "annotated"
            self.root = root if root.is_dir() else path
            self.hub = False
            if not any(p.is_dir() for p in self.root.iterdir()):
                raise DataError(f"data folder {self.root} holds no language folders")
        else:
            raise DataError(
                f"data source {source!r} is neither a folder nor the hub dataset {HUB_DATASET}"
            )

    def languages(self) -> list[str]:
        if self.hub:
            from .languages import language_table

            return sorted(language_table())
        return sorted(p.name for p in self.root.iterdir() if p.is_dir())

    def split(self, lang: str, split: str) -> list[Example]:
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}; expected one of {SPLITS}")
        key = (lang, split)
        if key not in self._cache:
            self._cache[key] = (
                self._read_hub(lang, split) if self.hub else self._read_tsv(lang, split)
            )
        return self._cache[key]

    def _read_tsv(self, lang: str, split: str) -> list[Example]:
        folder = self.root / lang
        if not folder.is_dir():
            raise DataError(f"no folder for language {lang} in {self.root}")
        path = folder / f"{split}.tsv"
        if not path.is_file():
            raise DataError(f"language {lang} has no {split} split ({path} is missing)")
        return parse_tsv(path)

    def _read_hub(self, lang: str, split: str) -> list[Example]:
        try:
            import datasets
        except ImportError as e:
            raise DataError(
                f"reading {HUB_DATASET} from the hub needs `pip install datasets`; "
                "or pass --data-dir with a local copy"
            ) from e
        hub_split = {"dev": "validation"}.get(split, split)
        try:
            ds = datasets.load_dataset(HUB_DATASET, lang, split=hub_split)
        except Exception as e:  # network, unknown config, ...
            raise DataError(
                f"could not load {HUB_DATASET}/{lang} ({split}) from the hub: "
                f"{e.__class__.__name__}: {str(e)[:200]}"
            ) from e
        return [
            _example(str(r.get("index_id", i)), r["category"], r["text"], f"{lang}/{split}", i)
            for i, r in enumerate(ds)
        ]


def _example(index_id: str, category: str, text: str, where: str, line: int) -> Example:
    try:
        idx = int(index_id)
    except (TypeError, ValueError):
        raise DataError(f"{where}, line {line}: index_id {index_id!r} is not an integer") from None
    if category not in LABEL_TO_ID:
        raise DataError(
            f"{where}, line {line}: unknown label {category!r} "
            f"(expected one of {', '.join(LABELS)})"
        )
    if text is None or not text.strip():
        raise DataError(f"{where}, line {line}: empty text")
    return Example(idx, LABEL_TO_ID[category], text)


def parse_tsv(path: str | os.PathLike) -> list[Example]:
    """One SIB-200 TSV: header `index_id, category, text`, standard CSV quoting."""
    path = Path(path)
    out = []
    with io.StringIO(read_text(path, DataError), newline="") as f:
        reader = csv.reader(f, delimiter="\t")
        header = next(reader, None)
        if header != ["index_id", "category", "text"]:
            raise DataError(
                f"{path}: expected the header index_id<TAB>category<TAB>text, got {header}"
            )
        for row in reader:
            line = reader.line_num
            if len(row) != 3:
                raise DataError(
                    f"{path}, line {line}: malformed row with {len(row)} fields (expected 3)"
                )
            out.append(_example(row[0], row[1], row[2], str(path), line))
    if not out:
        raise DataError(f"{path}: no rows")
    return out


# ---- a user's own data ----------------------------------------------------------------

SPLIT_NAMES = {"train": ("train",), "dev": ("dev", "validation", "valid"), "test": ("test",)}
FORMATS = (".csv", ".tsv", ".jsonl")


def _check_header(columns: list[str], path: Path) -> None:
    seen = set()
    for c in columns:
        if c in seen:
            raise DataError(
                f"{path}, line 1: the header names column {c!r} twice; which one holds the "
                "data would be a guess"
            )
        seen.add(c)


class OwnDataset:
    """A user's multilingual classification data: a local folder `<root>/<language>/<split>.
    {csv,tsv,jsonl}` (split: train, dev or validation, test), or a Hugging Face dataset id
    whose configurations are the languages (through `datasets`). `text_column` and
    `label_column` name the fields; the label set is read from the source languages' train
    splits (`fix_labels`), or given (an adapter's labels, `set_labels`)."""

    own = True

    def __init__(
        self,
        source: str,
        text_column: str = "text",
        label_column: str = "label",
        revision: str | None = None,
    ):
        self.source, self.text_column, self.label_column = source, text_column, label_column
        self.revision = revision
        self.labels: list[str] | None = None
        self._raw: dict[tuple[str, str], list[tuple[int, str, str, str]]] = {}
        path = Path(source).expanduser()
        if path.is_dir():
            self.hub, self.root = False, path
            self._languages = sorted(
                p.name
                for p in path.iterdir()
                if p.is_dir() and any(self._file(p.name, s) for s in SPLIT_NAMES)
            )
            if not self._languages:
                raise DataError(f"--data: {source} holds no <language>/<split>.csv|tsv|jsonl files")
        elif "/" in source and not source.startswith((".", "/", "~")):
            self.hub, self.root = True, None
            try:
                import datasets

                self._languages = list(datasets.get_dataset_config_names(source, revision=revision))
            except ImportError:
                raise DataError("--data: a hub dataset needs `pip install datasets`") from None
            except Exception as e:
                raise DataError(
                    f"--data: could not read the configurations of {source} from "
                    f"the hub ({e.__class__.__name__}: {str(e)[:160]}); offline, "
                    "give a local folder"
                ) from None
        else:
            raise DataError(f"--data: {source} is neither a folder nor a hub dataset id")

    def languages(self) -> list[str]:
        return list(self._languages)

    def _file(self, lang: str, split: str) -> Path | None:
        """The split's file; two candidates for one split are an error (which one is read
        would be a guess)."""
        found = [
            self.root / lang / f"{name}{ext}"
            for name in SPLIT_NAMES[split]
            for ext in FORMATS
            if (self.root / lang / f"{name}{ext}").is_file()
        ]
        if len(found) > 1:
            raise DataError(
                f"--data: {self.root / lang} holds {len(found)} files for the {split} split "
                f"({', '.join(p.name for p in found)}); keep one"
            )
        return found[0] if found else None

    def raw(self, lang: str, split: str) -> list[tuple[int, str, str, str]]:
        """(index, label, text, where) rows of a split, checked."""
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}; expected one of {SPLITS}")
        key = (lang, split)
        if key not in self._raw:
            self._raw[key] = self._read_hub(lang, split) if self.hub else self._read(lang, split)
        return self._raw[key]

    def _row(self, row: dict, where: str, i: int):
        for col in (self.text_column, self.label_column):
            if col not in row:
                raise DataError(
                    f"{where}: no column {col!r} (columns: {', '.join(row)}); "
                    "see --text-column / --label-column"
                )
        text, label = row[self.text_column], row[self.label_column]
        if text is None or not str(text).strip():
            raise DataError(f"{where}: empty text")
        if label is None or str(label).strip() == "":
            raise DataError(f"{where}: empty label")
        return (i, str(label).strip(), str(text), where)

    def _read(self, lang: str, split: str):
        import json

        if lang not in self._languages:
            raise DataError(f"--data: no language {lang!r} in {self.root}")
        path = self._file(lang, split)
        if path is None:
            raise DataError(f"--data: language {lang} has no {split} split in {self.root / lang}")
        rows = []
        with io.StringIO(read_text(path, DataError), newline="") as f:
            if path.suffix == ".jsonl":
                for n, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except ValueError as e:
                        raise DataError(f"{path}, line {n}: not JSON ({e})") from None
                    if not isinstance(row, dict):
                        raise DataError(f"{path}, line {n}: not a JSON object")
                    rows.append(self._row(row, f"{path}, line {n}", len(rows)))
            else:
                reader = csv.DictReader(f, delimiter="\t" if path.suffix == ".tsv" else ",")
                _check_header(reader.fieldnames or [], path)
                for row in reader:
                    if None in row:
                        raise DataError(
                            f"{path}, line {reader.line_num}: more fields than the header names"
                        )
                    rows.append(self._row(row, f"{path}, line {reader.line_num}", len(rows)))
        if not rows:
            raise DataError(f"{path}: no rows")
        return rows

    def _read_hub(self, lang: str, split: str):
        import datasets

        last = None
        for name in SPLIT_NAMES[split]:
            try:
                ds = datasets.load_dataset(self.source, lang, split=name, revision=self.revision)
                break
            except Exception as e:  # unknown split name, network, ...
                last = e
        else:
            raise DataError(
                f"--data: could not load {self.source}/{lang} ({split}): "
                f"{last.__class__.__name__}: {str(last)[:200]}"
            )
        feature = ds.features.get(self.label_column)
        names = getattr(feature, "names", None)
        rows = []
        for i, r in enumerate(ds):
            r = dict(r)
            if names is not None and isinstance(r.get(self.label_column), int):
                r[self.label_column] = names[r[self.label_column]]
            rows.append(self._row(r, f"{self.source}/{lang}/{split}, row {i}", i))
        return rows

    def fix_labels(self, languages: list[str]) -> list[str]:
        """The label set: every label of these languages' train splits, sorted."""
        self.labels = sorted({r[1] for l in languages for r in self.raw(l, "train")})
        if len(self.labels) < 2:
            raise DataError(
                f"--data: the train splits of {', '.join(languages)} hold "
                f"{len(self.labels)} label(s); a classifier needs at least 2"
            )
        return self.labels

    def set_labels(self, labels: list[str]) -> None:
        self.labels = list(labels)

    def split(self, lang: str, split: str) -> list[Example]:
        if self.labels is None:
            raise DataError("the label set is not fixed yet (fix_labels or set_labels)")
        ids = {l: i for i, l in enumerate(self.labels)}
        out = []
        for i, label, text, where in self.raw(lang, split):
            if label not in ids:
                raise DataError(
                    f"{where}: label {label!r} is not among the training labels "
                    f"({', '.join(self.labels)})"
                )
            out.append(Example(i, ids[label], text))
        return out


def open_dataset(
    data: str | None,
    data_dir: str | None,
    text_column: str,
    label_column: str,
    groups_csv: str | None,
):
    """SIB-200, or the user's own data (--data); its `.space` is the language space that
    names resolve in and reports group by (with the user's language groups, --groups)."""
    from .languages import LanguageSpace, language_table, load_user_groups

    if data:
        dataset = OwnDataset(data, text_column, label_column)
        codes = dataset.languages()
    else:
        dataset = SIB200(data_dir)
        codes = None
    user = load_user_groups(groups_csv, codes or list(language_table())) if groups_csv else None
    dataset.space = LanguageSpace.of(codes, user)
    return dataset


# ---- tokenization and batching --------------------------------------------------------


@dataclass
class Encoded:
    ids: list[list[int]]
    labels: list[int]
    n_truncated: int
    lang: list[str]


def encode(
    tokenizer, examples: list[Example], max_length: int, lang: str | list[str] = ""
) -> Encoded:
    """Token ids with `<s>`/`</s>`, cut to `max_length` (keeping `</s>`); counts the cuts."""
    enc = tokenizer.encode_batch([e.text for e in examples])
    ids, n_trunc = [], 0
    for e in enc:
        seq = e.ids
        if len(seq) > max_length:
            n_trunc += 1
            seq = seq[: max_length - 1] + [seq[-1]]
        ids.append(seq)
    langs = lang if isinstance(lang, list) else [lang] * len(examples)
    return Encoded(ids, [e.label for e in examples], n_trunc, langs)


def concat(parts: list[Encoded]) -> Encoded:
    return Encoded(
        [i for p in parts for i in p.ids],
        [l for p in parts for l in p.labels],
        sum(p.n_truncated for p in parts),
        [g for p in parts for g in p.lang],
    )


def _pad_to(n: int, multiple: int) -> int:
    return (n + multiple - 1) // multiple * multiple


def collate(
    ids: list[list[int]],
    labels: list[int],
    pad_id: int,
    multiple: int = 4,
    length: int | None = None,
):
    """Padded ids, attention mask and labels; `length`: pad to this length (at least the
    longest sequence's, rounded up to `multiple`)."""
    L = _pad_to(max([len(s) for s in ids] + [length or 0]), multiple)
    x = torch.full((len(ids), L), pad_id, dtype=torch.long)
    m = torch.zeros((len(ids), L), dtype=torch.long)
    for i, s in enumerate(ids):
        x[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        m[i, : len(s)] = 1
    return x, m, torch.tensor(labels, dtype=torch.long)


def length_grouped_batches(
    lengths: list[int], batch_size: int, rng: random.Random, mega: int = 50
) -> list[list[int]]:
    """Shuffled batches of similar length: shuffle, sort within mega-batches of
    `mega * batch_size` by length, cut into batches, shuffle the batch order (as HF's
    group_by_length does)."""
    idx = list(range(len(lengths)))
    rng.shuffle(idx)
    span = mega * batch_size
    batches = []
    for s in range(0, len(idx), span):
        chunk = sorted(idx[s : s + span], key=lambda i: -lengths[i])
        batches.extend(chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def sorted_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Evaluation batches sorted by length (least padding); order does not matter there."""
    idx = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [idx[j : j + batch_size] for j in range(0, len(idx), batch_size)]
