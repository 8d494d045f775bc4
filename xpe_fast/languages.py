"""The SIB-200 language table and the language groups of the XPE paper.

The table (`xpe_fast/data/languages.csv`, shipped in the package) gives per language its name,
Joshi class, family, region, whether it was in XLM-R's pretraining data (`xlmr_seen`) and
whether it is one of the paper's 46 Low-Performing languages.
"""

from __future__ import annotations

import csv
import difflib
import functools
from dataclasses import dataclass
from importlib import resources

from .errors import UnknownLanguageError


@dataclass(frozen=True)
class Language:
    code: str
    name: str
    joshi_class: int | None
    family: str
    region: str
    xlmr_seen: bool
    low_performing: bool


JOSHI5 = ("arb_Arab", "deu_Latn", "eng_Latn", "fra_Latn", "jpn_Jpan", "spa_Latn", "zho_Hans")
ENARZHO = ("eng_Latn", "arb_Arab", "zho_Hans")


@functools.lru_cache(maxsize=1)
def language_table() -> dict[str, Language]:
    text = resources.files("xpe_fast").joinpath("data/languages.csv").read_text(encoding="utf-8")
    out = {}
    for row in csv.DictReader(text.splitlines()):
        jc = row["joshi_class"].strip()
        out[row["code"]] = Language(
            row["code"],
            row["name"],
            int(jc) if jc else None,
            row["family"],
            row["region"],
            row["xlmr_seen"] == "1",
            row["low_performing"] == "1",
        )
    return out


def _groups() -> dict[str, tuple[str, ...]]:
    t = language_table()
    codes = sorted(t)
    seen = tuple(c for c in codes if t[c].xlmr_seen)
    return {
        # sources
        "joshi5": JOSHI5,
        "enarzho": ENARZHO,
        "seen-92": seen,
        # targets
        "low-performing": tuple(c for c in codes if t[c].low_performing),
        "unseen": tuple(c for c in codes if not t[c].xlmr_seen),
        "seen-wo-joshi5": tuple(c for c in seen if c not in JOSHI5),
        "all-wo-joshi5": tuple(c for c in codes if c not in JOSHI5),
        "all": tuple(codes),
    }


GROUP_TITLES = {
    "joshi5": "Joshi5",
    "enarzho": "EnArZho",
    "seen-92": "Seen-92",
    "low-performing": "Low-Performing",
    "unseen": "Unseen",
    "seen-wo-joshi5": "Seen w/o Joshi5",
    "all-wo-joshi5": "All w/o Joshi5",
    "all": "All",
}
TARGET_GROUPS = ("low-performing", "unseen", "seen-wo-joshi5", "all-wo-joshi5")
_ALIASES = {
    "seen92": "seen-92",
    "seen": "seen-92",
    "lowperforming": "low-performing",
    "low_performing": "low-performing",
    "lp": "low-performing",
    "seen_wo_joshi5": "seen-wo-joshi5",
    "all_wo_joshi5": "all-wo-joshi5",
}


@functools.lru_cache(maxsize=1)
def _builtin_groups() -> dict[str, tuple[str, ...]]:
    return _groups()


@dataclass(frozen=True)
class LanguageSpace:
    """The languages a command may name and the groups over them: SIB-200's table and its
    groups (the default), or a user's dataset's languages (one group "all") and the groups
    of a user's CSV. `report`: the groups reports give means for. A value: open_dataset
    makes it (the dataset's `.space`) and it goes to whoever resolves names or reports."""

    codes: frozenset
    groups: dict
    report: tuple

    @classmethod
    def of(cls, codes: list[str] | None = None, user_groups: dict | None = None) -> LanguageSpace:
        """The languages of a user's dataset (None: SIB-200's table) with a user's groups
        (added to SIB-200's; reports then give means for the user's groups)."""
        builtin = codes is None
        codes = list(language_table()) if builtin else list(codes)
        gs = dict(_builtin_groups()) if builtin else {"all": tuple(codes)}
        gs.update(user_groups or {})
        report = tuple(user_groups) if user_groups else (TARGET_GROUPS if builtin else ("all",))
        return cls(frozenset(codes), gs, report)

    def resolve(self, spec: str | list[str] | tuple[str, ...]) -> list[str]:
        """Codes of a group name ("joshi5", "unseen", ...), a list of codes, or a
        comma-separated mix of both. Unknown names raise UnknownLanguageError with
        suggestions."""
        items = spec.split(",") if isinstance(spec, str) else list(spec)
        out: list[str] = []
        for raw in items:
            item = raw.strip()
            if not item:
                continue
            g = _normalize_group(item)
            if g in self.groups:
                out.extend(self.groups[g])
            elif item in self.codes:
                out.append(item)
            else:
                close = difflib.get_close_matches(item, sorted(self.codes) + list(self.groups), 3)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                raise UnknownLanguageError(
                    f"unknown language or group {item!r}{hint} (groups: {', '.join(self.groups)})"
                )
        if not out:
            raise UnknownLanguageError(f"no languages in {spec!r}")
        return list(dict.fromkeys(out))  # de-duplicate, keep order

    def groups_of(self, code: str) -> list[str]:
        """The report groups a language belongs to."""
        return [g for g in self.report if code in self.groups[g]]


@functools.lru_cache(maxsize=1)
def sib200_space() -> LanguageSpace:
    return LanguageSpace.of()


def groups(space: LanguageSpace | None = None) -> dict[str, tuple[str, ...]]:
    return (space or sib200_space()).groups


def target_groups(space: LanguageSpace | None = None) -> tuple[str, ...]:
    """The groups reports give means for: the paper's four, or every group of the user's."""
    return (space or sib200_space()).report


def load_user_groups(path, codes: list[str]) -> dict[str, tuple[str, ...]]:
    """A CSV of (code, group) rows, one per membership, into {group: codes}; every code must
    be one of the dataset's languages."""
    from pathlib import Path

    p = Path(path)
    if not p.is_file():
        raise UnknownLanguageError(f"--groups: file {path} does not exist")
    import io

    from .textfile import read_text

    out: dict[str, list[str]] = {}
    text = read_text(p, lambda m: UnknownLanguageError(f"--groups: {m}"))
    with io.StringIO(text, newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"code", "group"} <= set(reader.fieldnames):
            raise UnknownLanguageError(
                f"--groups: {path} needs the columns code,group; got {reader.fieldnames}"
            )
        for row in reader:
            code, group = (row["code"] or "").strip(), (row["group"] or "").strip()
            if code not in codes:
                raise UnknownLanguageError(
                    f"--groups: {path}, line {reader.line_num}: language "
                    f"{code!r} is not in the dataset"
                )
            if not group:
                raise UnknownLanguageError(f"--groups: {path}, line {reader.line_num}: no group")
            out.setdefault(_normalize_group(group), []).append(code)
    return {g: tuple(dict.fromkeys(c)) for g, c in out.items()}


def group_names(space: LanguageSpace | None = None) -> list[str]:
    return list(groups(space))


def _normalize_group(name: str) -> str:
    key = name.strip().lower().replace(" ", "-")
    return _ALIASES.get(key, key)


def resolve_languages(spec, space: LanguageSpace | None = None) -> list[str]:
    """LanguageSpace.resolve in `space` (default: SIB-200's)."""
    return (space or sib200_space()).resolve(spec)


def groups_of(code: str, space: LanguageSpace | None = None) -> list[str]:
    """The target groups a language belongs to."""
    return (space or sib200_space()).groups_of(code)
