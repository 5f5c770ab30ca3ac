"""How the reader, the loop's champion and Tesseract read bench photo-loop's held-out photos in the trained layouts,
layout by layout (issue 21).

The loop trains on photos of one business in two layouts (``--train-templates 0,1``); the reader trained on the first
only (``bench pretrain --templates 0``). So the held-out photos in the trained layouts (seed 9000, nothing chosen on
them) hold two questions, and one CER answers neither: how well the champion reads a layout the reader already read,
and how well the loop teaches it a layout it had never seen. Their reads are not kept, so the pages are rendered
again here from the result's workload (checked against the worst pages the result kept), and each page's CER is
weighed by its length: per layout, the pooled CER, markup ignored, as the result scored it.

    python bench/photo_layouts.py RESULTS.json [RESULTS.json ...] [--out layouts.json]

With ``--out``, a PNG beside it draws each result's layouts, the three readers side by side.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ocrloop.atomic import atomic_write_json
from ocrloop.bench.photo_loop import as_rendered, heldout_photos_in_trained_layouts, heldout_processes
from ocrloop.bench.scoring import NORMALIZATIONS, page_layout
from ocrloop.bench.settings import BenchPhotoLoopSettings
from ocrloop.config import DataConfig
from ocrloop.data.dataset import Dataset
from ocrloop.errors import OcrloopError

READERS = ("reader", "champion", "tesseract")


def references(results: dict[str, Any], work: Path) -> list[str]:
    """The texts of the held-out photos in the trained layouts, in the order the result read them, rendered again
    under ``work``; an ``OcrloopError`` where they are not the pages the result kept."""
    workload = results["workload"]
    settings = as_rendered(BenchPhotoLoopSettings(out=work / "unused.json", reader=workload["reader"], work=work),
                           workload)
    root = heldout_photos_in_trained_layouts(settings, DataConfig(), heldout_processes(workload))
    texts = [example.text for example in Dataset.open(root, DataConfig()).examples()]
    for reader in ("reader", "champion"):
        for kept in results["heldout_trained_layouts"][reader].get("worst", []):
            if kept["page"] >= len(texts) or texts[kept["page"]] != kept["reference"]:
                raise OcrloopError(f"page {kept['page']} rendered here is not the one the result read: the pages "
                                   "were rendered otherwise")
    return texts


def by_layout(results: dict[str, Any], texts: list[str]) -> dict[str, dict[str, Any]]:
    """Per layout ("receipt 0", "invoice 1", ...): its pages, and each reader's pooled CER over them, markup ignored."""
    layouts = [page_layout(text) for text in texts]
    if None in layouts:
        raise OcrloopError(f"page {layouts.index(None)}: no one layout of data.synth writes it")
    keys = [f"{category} {layout}" for category, layout in layouts]
    # a page's CER is its edits over its length, markup ignored: weighed by that length, the pages pool
    lengths = [max(len(NORMALIZATIONS["strip_markdown"].apply(text)), 1) for text in texts]
    found = {key: {"pages": keys.count(key)} for key in sorted(set(keys))}
    for reader in READERS:
        page_cers = results["heldout_trained_layouts"].get(reader, {}).get("strip_markdown", {}).get("page_cers")
        if page_cers is None:
            continue  # Tesseract not scored yet
        if len(page_cers) != len(texts):
            raise OcrloopError(f"{reader}: {len(page_cers)} pages read, {len(texts)} rendered")
        for key, scores in found.items():
            pages = [(cer, length) for page_key, cer, length in zip(keys, page_cers, lengths) if page_key == key]
            scores[reader] = sum(cer * length for cer, length in pages) / sum(length for _, length in pages)
    return found


def plot(found: dict[str, dict[str, dict[str, Any]]], png: Path) -> None:
    """One panel per result: each layout's pooled CER for the reader, the champion and Tesseract."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(found), 1, figsize=(8, 2.6 * len(found)), squeeze=False)
    for ax, (name, layouts) in zip(axes[:, 0], found.items()):
        for offset, reader in enumerate(READERS):
            values = [layouts[layout].get(reader, float("nan")) for layout in layouts]
            ax.bar([index + offset * 0.27 for index in range(len(layouts))], values, 0.27, label=reader)
        ax.set_xticks([index + 0.27 for index in range(len(layouts))],
                      [f"{layout} ({scores['pages']} pages)" for layout, scores in layouts.items()])
        ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
        ax.set_ylabel("CER, markup ignored")
        ax.set_title(name, fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle("held-out photos in the trained layouts, layout by layout", fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", type=Path, help="bench photo-loop results (JSON)")
    parser.add_argument("--out", type=Path, help="also write the CER per layout here (JSON)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/ocrloop-photo-layouts"),
                        help="scratch folder for the pages rendered again")
    args = parser.parse_args()
    found = {}
    for path in args.results:
        if not path.is_file():
            raise SystemExit(f"error: {path}: no such results file")
        results = json.loads(path.read_text())
        if "heldout_trained_layouts" not in results:
            raise SystemExit(f"error: {path}: read no held-out photos in the trained layouts")
        try:
            found[path.name] = by_layout(results, references(results, args.work))
        except OcrloopError as error:
            raise SystemExit(f"error: {path}: {error}")
        for layout, scores in found[path.name].items():
            read = ", ".join(f"{reader} {scores[reader]:.1%}" for reader in READERS if reader in scores)
            print(f"{path.name}, {layout} ({scores['pages']} pages): {read}")
    if args.out:
        atomic_write_json(args.out, found)
        plot(found, args.out.with_suffix(".png"))


if __name__ == "__main__":  # the pages render in processes, which import this file again
    main()
