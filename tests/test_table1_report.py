"""experiments/table1.py report: RESULTS.md from the result files alone, the same every time,
and the committed RESULTS.md regenerated exactly from the committed results/."""

import json
import random
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "experiments"))

import table1  # noqa: E402
from table1_report import write_report  # noqa: E402

from xpe_fast.languages import groups  # noqa: E402


def fake_results(root: Path) -> None:
    rng = random.Random(0)
    langs = groups()["all-wo-joshi5"]
    base = {seed: {l: rng.uniform(0.2, 0.8) for l in langs} for seed in (0, 1, 2)}
    for tag, bonus in (("spt", 0.0), ("xpe", 0.03)):
        for seed in (0, 1, 2):
            per = {l: base[seed][l] + bonus for l in langs}
            gm = {
                g: sum(per[l] for l in groups()[g]) / len(groups()[g])
                for g in ("low-performing", "unseen", "seen-wo-joshi5", "all-wo-joshi5")
            }
            table1.atomic_json(
                root / "table1" / "joshi5" / tag / f"seed-{seed}.json",
                {
                    "source": "joshi5",
                    "method": tag,
                    "seed": seed,
                    "targets": "all-wo-joshi5",
                    "command": f"python -m xpe_fast.train --method {tag}",
                    "config": {},
                    "machine": {"cpu": "test CPU", "isa": ["avx2"], "torch": "x"},
                    "commit": "0123456789abcdef",
                    "precision": "fp32",
                    "groups": gm,
                    "per_language": per,
                    "source_dev_accuracy": 0.8,
                    "best_step": 450,
                    "history": [],
                    "train_seconds": 60.0,
                    "eval_seconds": 120.0,
                    "wall_seconds_total": 190.0,
                },
            )
    m = {"cpu": "test CPU", "isa": ["avx2"], "torch": "x"}
    table1.atomic_json(
        root / "reruns" / "joshi5" / "spt" / "seed-0--test.json",
        {
            "result": "results/table1/joshi5/spt/seed-0.json",
            "commit": "0123456789abcdef",
            "recorded_machine": m,
            "rerun_machine": {**m, "cpu": "other CPU"},
            "recorded": {"low-performing": 0.5, "unseen": 0.6},
            "rerun": {"low-performing": 0.503, "unseen": 0.6},
            "recorded_best_step": 450,
            "rerun_best_step": 500,
            "languages_compared": 198,
            "languages_differing": 17,
            "tolerance_points": 0.1,
            "reproduced": False,
        },
    )
    for name in ("spt-lr3e-2", "xpe-lr3e-2", "spt"):
        hist = [
            {"step": s, "dev_accuracy": min(0.85, s / 600), "dev_loss": 1 / s}
            for s in range(50, 1001, 50)
        ]
        table1.atomic_json(
            root / "curves" / f"{name}.json",
            {
                "curve": name,
                "command": "python -m xpe_fast.train ...",
                "precision": "fp32",
                "machine": {},
                "history": hist,
            },
        )


def test_report_from_result_files_is_deterministic(tmp_path):
    results = tmp_path / "results"
    fake_results(results)
    args = (table1.PLAN, table1.SCHEDULE, table1.CHOSEN_CURVES)
    a = write_report(results, tmp_path / "a.md", *args, plot_dir=tmp_path)
    b = write_report(results, tmp_path / "b.md", *args, plot_dir=tmp_path)
    assert a == b
    assert "| Joshi5 -> Low-Performing |" in a and "n=3" in a
    assert "XPE - SPT on the 46 low-performing languages" in a
    row = next(l for l in a.splitlines() if l.startswith("| Joshi5 |"))
    assert "+3.00" in row  # the fake XPE is 3 points better on every language
    assert "levels off by step" in a and (tmp_path / "curves.png").is_file()
    # each run names its kind of CPU (results from different machines can share the grid)
    assert (
        "| test CPU [avx2] | 0123456789 |" in a and "- test CPU [avx2] (avx2), torch x: 6 runs" in a
    )
    # wall times per kind of CPU and per source (sources' dev sets differ in size)
    assert (
        "    - from Joshi5: 6 runs, median 3.2 min (training 1.0 min, zero-shot evaluation 2.0" in a
    )
    assert "- from Joshi5: +3.00 points" in a
    assert (
        "| `results/table1/joshi5/spt/seed-0.json` | 0123456789 | test CPU [avx2] | other CPU "
        "[avx2] | 450, 500 | 17 of 198 | 50.00, 50.30 | 0.30 | no |" in a
    )
    assert (tmp_path / "table1.png").is_file()


@pytest.mark.skipif(
    not (REPO / "RESULTS.md").is_file(), reason="no RESULTS.md (nor results/) committed yet"
)
def test_committed_results_md_is_regenerated_exactly(tmp_path):
    text = write_report(
        REPO / "results",
        tmp_path / "RESULTS.md",
        table1.PLAN,
        table1.SCHEDULE,
        table1.CHOSEN_CURVES,
        plot_dir=tmp_path,
    )
    assert text == (REPO / "RESULTS.md").read_text()


def test_reproduce_compares_group_means_within_a_tenth_of_a_point():
    rec = {"low-performing": 0.5012, "unseen": 0.6300}
    lines, ok = table1.compare_groups(rec, {"low-performing": 0.5020, "unseen": 0.6291})
    assert ok and all("met" in l for l in lines)
    lines, ok = table1.compare_groups(rec, {"low-performing": 0.5030, "unseen": 0.6300})
    assert not ok and "MISSED" in lines[0] and "+0.18" in lines[0]
    _, ok = table1.compare_groups(rec, {"unseen": 0.63})  # a group the re-run lacks
    assert not ok


def test_reproduce_refuses_what_it_cannot_pin(tmp_path, capsys):
    def run(rec) -> tuple[int, str]:
        f = tmp_path / "r.json"
        f.write_text(rec if isinstance(rec, str) else json.dumps(rec))
        code = table1.main(["reproduce", str(f)])
        return code, capsys.readouterr().err

    good = {"command": "python -m xpe_fast.train --output-dir OUT", "groups": {}, "seed": 0}
    assert run("{not json")[0] == 2
    code, err = run({"groups": {}})  # no command, no commit
    assert code == 2 and err.count("\n") == 1 and "r.json" in err
    code, err = run({**good, "commit": "0123abcd-dirty"})
    assert code == 2 and "uncommitted" in err
    code, err = run({**good, "commit": "f" * 40})
    assert code == 2 and "not in this clone" in err


def test_a_group_mean_counts_only_where_every_language_of_the_group_was_evaluated(tmp_path):
    """Seen-92's runs evaluate the unseen languages only: their 'all-wo-joshi5' mean (over
    those) must not appear as the group's mean."""
    from table1_report import load

    unseen = groups()["unseen"]
    table1.atomic_json(
        tmp_path / "table1" / "seen-92" / "spt" / "seed-0.json",
        {
            "source": "seen-92",
            "method": "spt",
            "seed": 0,
            "groups": {"unseen": 0.6, "low-performing": 0.5, "all-wo-joshi5": 0.6},
            "per_language": {l: 0.6 for l in unseen},
        },
    )
    (run,) = load(tmp_path)
    assert set(run["groups"]) == {"unseen", "low-performing"}
