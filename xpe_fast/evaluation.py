"""The evaluation loop, shared by the commands and the training loop: batches sorted by length
(least padding), the static prompt computed once and reused for every batch, inference mode;
under torchrun whole batches or whole languages dealt out to the ranks."""

from __future__ import annotations

import sys

import torch

from . import data as D
from .device import autocast
from .distributed import World


@torch.inference_mode()
def evaluate_encoded(
    model,
    enc: D.Encoded,
    batch_size: int,
    pad_id: int,
    precision: str,
    device: torch.device,
    prompt: torch.Tensor | None = None,
    world: World | None = None,
):
    """Accuracy and mean loss over encoded examples (and each example's prediction); the
    static prompt is computed once. Under torchrun (`world`), the length-sorted batches are
    dealt out whole across ranks (so each is computed as in one process) and the counts are
    summed: every rank returns the totals (predictions: its own examples only, else -1)."""
    model.eval()
    world = world or World()
    if prompt is None:
        with autocast(precision, device):
            prompt = model.prompt()
    correct, loss_sum = 0, 0.0
    preds = [-1] * len(enc.ids)
    batches = D.sorted_batches([len(s) for s in enc.ids], batch_size)
    if world.enabled:
        mine = world.deal([len(b) * len(enc.ids[b[0]]) for b in batches])
        batches = [batches[i] for i in mine]
    for idx in batches:
        ids, mask, labels = D.collate(
            [enc.ids[i] for i in idx], [enc.labels[i] for i in idx], pad_id
        )
        ids, mask, labels = ids.to(device), mask.to(device), labels.to(device)
        with autocast(precision, device):
            logits = model(ids, mask, prompt=prompt)
        logits = logits.float()
        loss_sum += torch.nn.functional.cross_entropy(logits, labels, reduction="sum").item()
        p = logits.argmax(-1)
        correct += (p == labels).sum().item()
        for i, v in zip(idx, p.tolist()):
            preds[i] = v
    correct, loss_sum = world.sum([correct, loss_sum])
    n = max(1, len(enc.ids))
    return correct / n, loss_sum / n, preds


def evaluate_languages(
    model,
    tokenizer,
    dataset: D.SIB200,
    languages: list[str],
    split: str,
    max_length: int,
    batch_size: int,
    pad_id: int,
    precision: str,
    device: torch.device,
    progress: bool = True,
    world: World | None = None,
    keep_predictions: bool = False,
) -> dict:
    """Per language: accuracy, number of examples, number truncated (and, with
    `keep_predictions`, each example's predicted label id in the split's order). Under
    torchrun (`world`), whole languages are dealt out across ranks, balanced by text length,
    and every rank returns every language's result."""
    from tqdm.auto import tqdm

    world = world or World()
    model.eval()
    with torch.inference_mode(), autocast(precision, device):
        prompt = model.prompt()
    mine = languages
    if world.enabled:
        size = [sum(len(e.text) for e in dataset.split(l, split)) for l in languages]
        mine = [languages[i] for i in world.deal(size)]
    out = {}
    bar = tqdm(
        mine,
        desc=f"evaluate ({split})",
        disable=not progress or not world.main,
        unit="lang",
        file=sys.stderr,
        mininterval=0.5 if sys.stderr.isatty() else 60,
    )
    for lang in bar:
        enc = D.encode(tokenizer, dataset.split(lang, split), max_length, lang)
        acc, loss, preds = evaluate_encoded(
            model, enc, batch_size, pad_id, precision, device, prompt
        )
        out[lang] = {"accuracy": acc, "loss": loss, "n": len(enc.ids), "truncated": enc.n_truncated}
        if keep_predictions:
            out[lang]["predictions"] = preds
        bar.set_postfix(lang=lang, acc=f"{acc:.3f}")
    if world.enabled:
        merged = {}
        for part in world.gather(out):
            merged.update(part)
        out = {lang: merged[lang] for lang in languages}
    return out
