import pytest

from xpe_fast.languages import (
    ENARZHO,
    JOSHI5,
    UnknownLanguageError,
    groups,
    groups_of,
    language_table,
    resolve_languages,
)


def test_table_has_205_languages():
    t = language_table()
    assert len(t) == 205
    assert sum(l.xlmr_seen for l in t.values()) == 92
    assert sum(l.low_performing for l in t.values()) == 46
    assert all(not l.xlmr_seen for l in t.values() if l.low_performing)


@pytest.mark.parametrize(
    "name,count",
    [
        ("joshi5", 7),
        ("enarzho", 3),
        ("seen-92", 92),
        ("low-performing", 46),
        ("unseen", 113),
        ("seen-wo-joshi5", 85),
        ("all-wo-joshi5", 198),
        ("all", 205),
    ],
)
def test_group_sizes_match_the_paper(name, count):
    assert len(resolve_languages(name)) == count
    assert len(set(groups()[name])) == count


def test_source_groups_are_the_papers():
    assert set(resolve_languages("Joshi5")) == set(JOSHI5)
    assert set(resolve_languages("EnArZho")) == {"eng_Latn", "arb_Arab", "zho_Hans"} == set(ENARZHO)
    assert not set(JOSHI5) & set(resolve_languages("all-wo-joshi5"))


def test_lists_and_mixtures():
    assert resolve_languages("eng_Latn, amh_Ethi") == ["eng_Latn", "amh_Ethi"]
    assert resolve_languages(["enarzho", "eng_Latn"]) == ["eng_Latn", "arb_Arab", "zho_Hans"]
    assert "low-performing" in groups_of("dzo_Tibt") and "unseen" in groups_of("dzo_Tibt")


@pytest.mark.parametrize("bad", ["eng_latn", "xx_Latn", "joshi6", ""])
def test_unknown_codes_raise_with_suggestions(bad):
    with pytest.raises(UnknownLanguageError) as e:
        resolve_languages(bad)
    if bad == "eng_latn":
        assert "eng_Latn" in str(e.value)
