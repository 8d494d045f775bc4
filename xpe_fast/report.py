"""Reports of a run: per-language accuracy CSVs, group means, summaries over seeds (and over
the methods of a grid), the terminal tables and the accuracy plot."""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

from .atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from .languages import GROUP_TITLES, groups, groups_of, language_table, target_groups

log = logging.getLogger("xpe_fast.report")


def mean_std(vals: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single value)."""
    mean = sum(vals) / len(vals)
    std = (sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) ** 0.5 if len(vals) > 1 else None
    return mean, std


def group_means(per_lang: dict[str, float], space=None) -> dict[str, dict]:
    """Mean accuracy per target group over the languages present."""
    res = {}
    for g in target_groups(space):
        accs = [per_lang[c] for c in groups(space)[g] if c in per_lang]
        if accs:
            res[g] = {
                "mean": sum(accs) / len(accs),
                "languages": len(accs),
                "group_size": len(groups(space)[g]),
            }
    return res


def format_group_table(rows: dict[str, dict], title: str = "") -> str:
    """rows: group -> {"mean", "std"?, "languages", "group_size"}."""
    buf = io.StringIO()
    if title:
        buf.write(title + "\n")
    buf.write(f"{'target group':<20} {'langs':>9} {'accuracy %':>12}\n")
    for g, r in rows.items():
        acc = f"{100 * r['mean']:.1f}"
        if r.get("std") is not None:
            acc += f" ± {100 * r['std']:.1f}"
        buf.write(
            f"{GROUP_TITLES.get(g, g):<20} {r['languages']:>4}/{r['group_size']:<4} {acc:>12}\n"
        )
    return buf.getvalue()


def write_accuracy_csv(
    path, per_lang: dict[str, dict], extra_cols: dict | None = None, space=None
) -> None:
    table = language_table()
    buf = io.StringIO()
    w = csv.writer(buf)
    cols = [
        "language",
        "name",
        "accuracy",
        "n",
        "truncated",
        "xlmr_seen",
        "low_performing",
        "joshi_class",
        "groups",
    ]
    w.writerow(cols + list(extra_cols or {}))
    for lang, r in per_lang.items():
        t = table.get(lang)
        w.writerow(
            [
                lang,
                t.name if t else "",
                f"{r['accuracy']:.4f}",
                r["n"],
                r["truncated"],
                int(t.xlmr_seen) if t else "",
                int(t.low_performing) if t else "",
                t.joshi_class if t and t.joshi_class is not None else "",
                ";".join(groups_of(lang, space)),
            ]
            + list((extra_cols or {}).values())
        )
    atomic_write_text(path, buf.getvalue())


def summarize(
    results: list[dict], cfg: dict, out: Path, wall: dict | None = None, space=None
) -> dict:
    """Mean +- std over seeds per group, and per-language means, into `out`/summary.json,
    accuracy.csv and accuracy.png. `wall`: wall-time figures to record."""
    regimes = ["zero_shot"] + (["supervised"] if cfg["regime"] == "supervised" else [])
    summary = {
        "config": cfg,
        "seeds": [r["seed"] for r in results],
        **(wall or {}),
        "source_dev_accuracy": [r["source_dev_accuracy"] for r in results],
        "groups": {},
        "per_language": {},
    }
    for reg in regimes:
        per_seed = [group_means(r[reg], space) for r in results]
        rows = {}
        for g in per_seed[0]:
            vals = [ps[g]["mean"] for ps in per_seed if g in ps]
            mean, std = mean_std(vals)
            rows[g] = {
                "mean": mean,
                "std": std,
                "per_seed": vals,
                "languages": per_seed[0][g]["languages"],
                "group_size": per_seed[0][g]["group_size"],
            }
        summary["groups"][reg] = rows
        langs = list(results[0][reg])
        summary["per_language"][reg] = {
            l: sum(r[reg][l] for r in results) / len(results) for l in langs
        }
    atomic_write_json(out / "summary.json", summary)
    write_mean_csv(out / "accuracy.csv", summary, space)
    try:
        plot_accuracy(out / "accuracy.png", summary)
    except Exception as e:  # a plot must never lose the results
        log.warning("could not draw the plot: %s", e)
    return summary


def summarize_grid(
    per_method: dict[str, dict], cfg: dict, out: Path, wall: dict | None = None
) -> dict:
    """A grid's summary.json: each method's group rows (mean +- std over seeds)."""
    summary = {
        "config": cfg,
        "grid": True,
        **(wall or {}),
        "methods": {
            tag: {
                "seeds": s["seeds"],
                "source_dev_accuracy": s["source_dev_accuracy"],
                "groups": s["groups"],
            }
            for tag, s in per_method.items()
        },
    }
    atomic_write_json(out / "summary.json", summary)
    return summary


def format_grid_table(
    per_method: dict[str, dict], regime: str = "zero_shot", title: str = ""
) -> str:
    """Groups as rows, methods as columns: mean +- std over seeds, in %."""
    buf = io.StringIO()
    if title:
        buf.write(title + "\n")
    tags = list(per_method)
    width = max(13, *(len(t) + 2 for t in tags))
    buf.write(f"{'target group':<20}" + "".join(f"{t:>{width}}" for t in tags) + "\n")
    groups_seen = []
    for s in per_method.values():
        groups_seen += [g for g in s["groups"].get(regime, {}) if g not in groups_seen]
    for g in groups_seen:
        cells = []
        for t in tags:
            r = per_method[t]["groups"].get(regime, {}).get(g)
            cell = (
                ""
                if r is None
                else f"{100 * r['mean']:.1f}"
                + (f" ± {100 * r['std']:.1f}" if r.get("std") is not None else "")
            )
            cells.append(f"{cell:>{width}}")
        buf.write(f"{GROUP_TITLES.get(g, g):<20}" + "".join(cells) + "\n")
    n = {t: len(s["seeds"]) for t, s in per_method.items()}
    buf.write("seeds: " + ", ".join(f"{t} {k}" for t, k in n.items()) + "\n")
    return buf.getvalue()


def write_mean_csv(path: Path, summary: dict, space=None) -> None:
    per = {}
    for reg, langs in summary["per_language"].items():
        for l, acc in langs.items():
            per.setdefault(l, {})[reg] = acc
    t = language_table()
    regs = list(summary["per_language"])
    lines = ["language,name," + ",".join(f"{r}_accuracy" for r in regs) + ",groups"]
    for l, accs in per.items():
        name = t[l].name.replace('"', "'") if l in t else ""
        lines.append(
            f'{l},"{name}",'
            + ",".join(f"{accs.get(r, float('nan')):.4f}" for r in regs)
            + ","
            + ";".join(groups_of(l, space))
        )
    atomic_write_text(path, "\n".join(lines) + "\n")


def plot_accuracy(path: Path, summary: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = language_table()
    accs = summary["per_language"]["zero_shot"]
    items = sorted(accs.items(), key=lambda kv: kv[1])

    def color(code):
        lang = t.get(code)
        if lang is None:
            return "#999999"
        if lang.low_performing:
            return "#d62728"
        return "#ff7f0e" if not lang.xlmr_seen else "#1f77b4"

    fig, ax = plt.subplots(figsize=(max(8, 0.09 * len(items)), 4.5), dpi=110)
    ax.bar(
        range(len(items)),
        [100 * a for _, a in items],
        color=[color(c) for c, _ in items],
        width=0.85,
    )
    ax.axhline(100 / 7, color="k", lw=0.8, ls="--")
    ax.set_xticks(range(len(items)))
    ax.set_xticklabels([c for c, _ in items], rotation=90, fontsize=4)
    ax.set_ylabel("zero-shot accuracy %")
    cfg = summary["config"]
    ax.set_title(
        f"{cfg['method'].upper()} (r={cfg['encoder_ratio']}), source {cfg['source']}, "
        f"seeds {summary['seeds']}",
        fontsize=9,
    )
    from matplotlib.patches import Patch

    ax.legend(
        handles=[
            Patch(color="#1f77b4", label="seen by XLM-R"),
            Patch(color="#ff7f0e", label="unseen"),
            Patch(color="#d62728", label="low-performing (unseen)"),
            plt.Line2D([], [], color="k", ls="--", lw=0.8, label="chance 14.3 %"),
        ],
        fontsize=7,
        loc="upper left",
    )
    ax.set_xlim(-1, len(items))
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
