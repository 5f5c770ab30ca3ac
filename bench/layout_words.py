"""Which words of its pages a reader writes: the words its layout repeats on every page, and the words each page
holds of its own (issue 21).

On a layout it never trained on, run 31's reader read most items, quantities and prices, and wrote them in its own
layout: "Receipt no. 3412-14" as "Receipt #R-34124", a table as a list, a subtotal the page does not have. A CER of
60 % does not say how much of that is reading and how much is the layout. This splits the words of the references
(runs of letters, runs of digits; markup aside) into **layout words**, those on at least 90 % of the pages of their
category (the labels: "Seller", "Gross", "Qty"), and **page words**, the rest (names, numbers, dates, amounts); and
counts, per read set and category, the share of each a read writes (as many times as its reference holds it), and
the share of the words read that its reference does not hold. It reads every page set of a result that kept all
its reads: ``bench pretrain``'s test pages and unseen layout (as photos and as clean pages; from the twenty-second
session on), ``bench photo-loop``'s held-out photos (reader and champion).

    python bench/layout_words.py RESULTS.json [RESULTS.json ...] [--out words.json]
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict

from ocrloop.bench.scoring import kept_reads_command, page_category
from ocrloop.errors import OcrloopError

# Where each command keeps its read sets: bench pretrain's, then bench photo-loop's (the unseen layout's photos).
READ_SETS = ("heldout_pages", "heldout_photos", "heldout_unseen_layout", "reader", "champion")
LAYOUT_SHARE = 0.9  # a layout word is on at least this share of its category's pages
_WORD = re.compile(r"[A-Za-z]+|\d+")


def words(text: str) -> list[str]:
    """The runs of letters and the runs of digits of ``text``, in order (markup and punctuation fall away)."""
    return _WORD.findall(text)


def layout_words(references: list[str]) -> set[str]:
    """The words of letters on at least ``LAYOUT_SHARE`` of ``references`` (runs of digits are the page's own, even
    the cents of every amount)."""
    pages = Counter(word for reference in references for word in set(words(reference)) if not word.isdigit())
    return {word for word, count in pages.items() if count >= LAYOUT_SHARE * len(references)}


def written(reads: list[dict[str, str]]) -> dict[str, dict]:
    """Per category of ``reads`` (a reference and a read each): its layout words, and the share of the layout words
    and of the page words of the references that the reads write, and the share of words read that the reference
    does not hold."""
    by_category: dict[str, list[dict[str, str]]] = defaultdict(list)
    for read in reads:
        by_category[page_category(read["reference"])].append(read)
    found = {}
    for category, pages in sorted(by_category.items()):
        layout = layout_words([page["reference"] for page in pages])
        held, hit, read_words, unheld = Counter(), Counter(), 0, 0
        for page in pages:
            reference, read = Counter(words(page["reference"])), Counter(words(page["read"]))
            for word, count in reference.items():
                kind = "layout" if word in layout else "page"
                held[kind] += count
                hit[kind] += min(count, read[word])
            read_words += sum(read.values())
            unheld += sum((read - reference).values())
        found[category] = {"pages": len(pages), "layout_words": sorted(layout),
                           "layout_words_written": hit["layout"] / held["layout"] if held["layout"] else None,
                           "page_words_written": hit["page"] / held["page"] if held["page"] else None,
                           "words_read_not_on_the_page": unheld / read_words if read_words else None}
    return found


def layout_words_of(results: dict) -> dict:
    """``written`` for every read set of ``results`` that kept its reads."""
    sets = {name: results[name]["reads"] for name in READ_SETS if results.get(name, {}).get("reads")}
    if not sets:
        raise OcrloopError(f"this result kept no reads ({', '.join(READ_SETS)}): bench pretrain keeps its test pages' "
                           "from the nineteenth session on, the unseen layout's and bench photo-loop's from the "
                           "twenty-second")
    return {name: written(reads) for name, reads in sets.items()}


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def show(name: str, found: dict) -> None:
    for read_set, categories in found.items():
        for category, counted in categories.items():
            print(f"{name}, {read_set}, {category} ({counted['pages']} pages): layout words "
                  f"{_share(counted['layout_words_written'])} written ({' '.join(counted['layout_words'])}), page "
                  f"words {_share(counted['page_words_written'])}; {_share(counted['words_read_not_on_the_page'])} "
                  f"of the words read are not on the page")


if __name__ == "__main__":
    kept_reads_command(__doc__.split("\n\n")[0], layout_words_of, show, "shares")
