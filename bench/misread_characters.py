"""Which characters of its test pages a ``bench pretrain`` reader misreads: digits, letters and the rest, per
category, and the digits per field of the document (issue 21).

Run 27's reader read letters on its test pages about as well on receipts as on invoices, but missed one digit in
eight on receipts. Digits that nothing on the page predicts (document numbers, totals) are where it fails; dates
and item prices, which the lessons make likely, it reads far better. The reads come from a result that kept every
read (``heldout_pages.reads``). Each reference character counts as misread when the edit script from the reference
to the read (Levenshtein, markup included) replaces or deletes it; insertions are counted apart.

    python bench/misread_characters.py RESULTS.json [RESULTS.json ...] [--out characters.json]
"""

from __future__ import annotations

from collections import defaultdict

from rapidfuzz.distance import Levenshtein

from ocrloop.bench.scoring import kept_reads, kept_reads_command, page_category

KINDS = ("digit", "letter", "other")
FIELDS = ("number", "date", "item", "total", "other")


def field(line: str) -> str:
    """What a line of a receipt or invoice holds: the document's number, a date, an item, a total, or other."""
    if "INVOICE" in line or line.startswith("Receipt #"):
        return "number"
    if line.startswith(("**Date:**", "**Due:**")):
        return "date"
    if any(word in line for word in ("Subtotal", "Tax", "Total", "Amount:")):
        return "total"
    return "item" if "$" in line else "other"


def kind(character: str) -> str:
    return "digit" if character.isdigit() else "letter" if character.isalpha() else "other"


def misread_characters(results: dict) -> dict:
    """Per category: for each kind of character, how many the references hold and the share misread; for digits, the
    same per field; and the characters the reads inserted."""
    counts: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    inserted: dict[str, int] = defaultdict(int)
    for page in kept_reads(results):
        reference, read = page["reference"], page["read"]
        where = page_category(reference)
        misread = set()
        for operation in Levenshtein.editops(reference, read):
            if operation.tag == "insert":
                inserted[where] += 1
            else:
                misread.add(operation.src_pos)
        position = 0
        for line in reference.split("\n"):
            line_field = field(line)
            for character in line:
                wrong = position in misread
                for key in (kind(character),) + ((f"digit:{line_field}",) if character.isdigit() else ()):
                    counts[where][key][0] += 1
                    counts[where][key][1] += wrong
                position += 1
            position += 1  # the newline
    return {where: {"characters": {key: {"count": n, "misread": wrong / n} for key, (n, wrong) in sorted(found.items())},
                    "inserted": inserted[where]}
            for where, found in sorted(counts.items())}


def show(name: str, found: dict) -> None:
    for where, counted in found.items():
        characters = counted["characters"]
        shown = ", ".join(f"{key} {characters[key]['misread']:.1%} of {characters[key]['count']}"
                          for key in (*KINDS, *(f"digit:{f}" for f in FIELDS)) if key in characters)
        print(f"{name}, {where}: misread {shown}; {counted['inserted']} inserted")


if __name__ == "__main__":
    kept_reads_command(__doc__.split("\n\n")[0], misread_characters, show, "shares")
