import random
import sys

import pytest

from xpe_fast import data as D

GOOD = 'index_id\tcategory\ttext\n1\tsports\t"""She\'s fast,"" he said."\n2\ttravel\tplain text\n'


def write(tmp_path, text, lang="xyz_Latn", split="train"):
    folder = tmp_path / "data" / "annotated" / lang
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / f"{split}.tsv"
    p.write_text(text, encoding="utf-8")
    return p


def test_quoted_rows_are_unescaped(tmp_path):
    rows = D.parse_tsv(write(tmp_path, GOOD))
    assert rows[0].text == '"She\'s fast," he said.'
    assert rows[0].label == D.LABEL_TO_ID["sports"] and rows[1].index_id == 2


@pytest.mark.parametrize(
    "text,match",
    [
        ("index_id\tcategory\ttext\n1\tsports\n", "malformed row"),
        ("index_id\tcategory\ttext\n1\tcooking\tx\n", "unknown label 'cooking'"),
        ("index_id\tcategory\ttext\n1\tsports\t  \n", "empty text"),
        ("index_id\tcategory\ttext\nabc\tsports\tx\n", "not an integer"),
        ("id\tlabel\ttext\n1\tsports\tx\n", "header"),
        ("index_id\tcategory\ttext\n", "no rows"),
    ],
)
def test_malformed_files_raise_clear_errors(tmp_path, text, match):
    with pytest.raises(D.DataError, match=match):
        D.parse_tsv(write(tmp_path, text))


def test_missing_folder_language_and_split(tmp_path):
    with pytest.raises(D.DataError, match="does not exist"):
        D.SIB200(tmp_path / "nope")
    write(tmp_path, GOOD)
    ds = D.SIB200(tmp_path)
    assert ds.languages() == ["xyz_Latn"]
    with pytest.raises(D.DataError, match="no dev split"):
        ds.split("xyz_Latn", "dev")
    with pytest.raises(D.DataError, match="no folder for language"):
        ds.split("abc_Latn", "train")


def test_the_real_copy(shared_dir):
    ds = D.SIB200(shared_dir / "sib200")
    assert len(ds.languages()) == 205
    sizes = {s: len(ds.split("amh_Ethi", s)) for s in D.SPLITS}
    assert sizes == {"train": 701, "dev": 99, "test": 204}
    eng, fra = ds.split("eng_Latn", "test"), ds.split("fra_Latn", "test")
    assert [e.index_id for e in eng] == [e.index_id for e in fra]
    assert [e.label for e in eng] == [e.label for e in fra]
    by_id = {e.index_id: e.text for e in ds.split("eng_Latn", "train")}
    assert by_id[1239].startswith('"She\u2019s very cute and sings quite well, too," he said')
    assert not any('""' in t for t in by_id.values())  # CSV escaping undone everywhere


class _Tok:
    def encode_batch(self, texts):
        from types import SimpleNamespace

        return [SimpleNamespace(ids=[0] + list(range(5, 5 + len(t.split()))) + [2]) for t in texts]


def test_encode_truncates_keeping_the_end_token_and_counts():
    ex = [D.Example(1, 0, "a b c d e f g h"), D.Example(2, 1, "a b")]
    enc = D.encode(_Tok(), ex, max_length=5)
    assert enc.n_truncated == 1
    assert enc.ids[0] == [0, 5, 6, 7, 2] and enc.ids[1] == [0, 5, 6, 2]


def test_length_grouped_batches_cover_everything_once_and_pad_little():
    rng = random.Random(0)
    lengths = [rng.randint(3, 120) for _ in range(1000)]
    batches = D.length_grouped_batches(lengths, 32, random.Random(1))
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(1000))
    spread = [max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches]
    assert sorted(spread)[len(spread) // 2] < 20  # most batches hold similar lengths
    ids, mask, labels = D.collate([[0, 5, 2], [0, 2]], [1, 2], pad_id=1)
    assert ids.shape == (2, 4) and mask.tolist() == [[1, 1, 1, 0], [1, 1, 0, 0]]
    assert ids[1].tolist() == [0, 2, 1, 1]


def test_the_hub_id_is_the_hub_not_a_folder(monkeypatch, tmp_path):
    # Without `datasets` the hub source fails at once with what to do, not later or as a
    # missing folder; with no local copy anywhere the message says where it looked.
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(D.DataError, match="pip install datasets"):
        D.SIB200("Davlan/sib200")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(D.ENV_DATA_DIR, raising=False)
    with pytest.raises(D.DataError, match="no local SIB-200 copy"):
        D.SIB200()
    with pytest.raises(D.DataError, match="neither a folder nor the hub"):
        D.SIB200("sib200")
