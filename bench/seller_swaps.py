"""How much of a ``bench pretrain`` reader's CER on its test pages comes from pages whose seller it misread (issue 21).

The worst test pages of runs 22 and 24 were all alike: the reader wrote another business as the seller, then that
business's items and prices over the right quantities. This counts such pages in a result that kept every read
(``heldout_pages.reads``, from the nineteenth session on): a page's seller is the first seller's name of any
business in its text, and the read misread it when the read names another one first, or none.

    python bench/seller_swaps.py RESULTS.json [RESULTS.json ...] [--out swaps.json]

Prints one line per result: the pages with a misread seller, and the pooled CER (markup ignored) of all pages and
of the others alone.
"""

from __future__ import annotations

from types import SimpleNamespace

from ocrloop.bench.scoring import kept_reads, kept_reads_command, scored
from ocrloop.data.synth import COMPANY_NAMES, names_pattern

_SELLER = names_pattern(COMPANY_NAMES)


def seller(text: str) -> str | None:
    """The first seller's name of any business in ``text``; None where it names none."""
    found = _SELLER.search(text)
    return found.group() if found else None


def seller_swaps(results: dict) -> dict:
    """The test pages of ``results`` whose seller was misread, with the pooled CER (markup ignored) of all pages and
    of the others."""
    reads = kept_reads(results)
    swapped = [page for page, r in enumerate(reads) if seller(r["reference"]) != seller(r["read"])]

    def pooled(pages: list[int]) -> float | None:
        if not pages:
            return None
        examples = [SimpleNamespace(text=reads[p]["reference"], category="page", business="test") for p in pages]
        return scored(examples, [reads[p]["read"] for p in pages])["strip_markdown"]["cer"]

    kept = [page for page in range(len(reads)) if page not in swapped]
    return {"pages": len(reads), "misread_seller": swapped, "cer": pooled(list(range(len(reads)))),
            "cer_without_them": pooled(kept),
            "examples": [{"page": p, "seller": seller(reads[p]["reference"]), "read": seller(reads[p]["read"])}
                         for p in swapped[:10]]}


def show(name: str, found: dict) -> None:
    without = "no page left" if found["cer_without_them"] is None else f"{found['cer_without_them']:.2%}"
    print(f"{name}: {len(found['misread_seller'])} of {found['pages']} pages with a misread seller; "
          f"CER {found['cer']:.2%}, without them {without}")


if __name__ == "__main__":
    kept_reads_command(__doc__.split("\n\n")[0], seller_swaps, show, "counts")
