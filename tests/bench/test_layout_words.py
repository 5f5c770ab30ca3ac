"""bench/layout_words.py: which of a layout's own words and of each page's words a reader writes."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parents[2] / "bench" / "layout_words.py"
RECEIPT = "## {store}\n**Receipt no.** {number}\n| Item | Qty | Price |\n|---|---|---|\n| {item} | 2 | $40.00 |\n**Total due:** $40.00"


def _receipt(store: str, number: str, item: str) -> str:
    return RECEIPT.format(store=store, number=number, item=item)


def _run(tmp_path, *arguments):
    return subprocess.run([sys.executable, str(SCRIPT), *arguments], capture_output=True, text=True, cwd=tmp_path)


def test_layout_words_and_page_words_are_counted_apart_per_read_set(tmp_path):
    pages = [_receipt("Cable Corner", "3412-14", "Desk Lamp"), _receipt("TechGear Store", "1200-07", "Phone Case")]
    # the first read exact; the second writes the page's words but one ("Cose") in the layout of another ("Receipt #",
    # a list, a subtotal), so no layout word but "Receipt" and "Total"
    other_layout = "# TechGear Store\nReceipt #1200-07\n- Phone Cose x2: $40.00\n**Subtotal:** $40.00\n**Total:** $40.00"
    reads = [{"reference": pages[0], "read": pages[0]}, {"reference": pages[1], "read": other_layout}]
    result = tmp_path / "run.json"
    result.write_text(json.dumps({"heldout_unseen_layout": {"reads": reads}, "heldout_photos": {"reads": reads[:1]},
                                  "heldout_pages": {"worst": []}}))
    done = _run(tmp_path, str(result), "--out", "words.json")
    assert done.returncode == 0, done.stderr
    found = json.loads((tmp_path / "words.json").read_text())["run.json"]
    assert sorted(found) == ["heldout_photos", "heldout_unseen_layout"]  # the test pages kept no reads
    receipt = found["heldout_unseen_layout"]["receipt"]
    assert receipt["layout_words"] == ["Item", "Price", "Qty", "Receipt", "Total", "due", "no"]
    assert receipt["layout_words_written"] == 9 / 14  # 7 on the exact read, Receipt and Total on the other
    # page words: store (2), number (2), item (2), quantity, the amount twice (2 words each): 11 a page, one missed
    assert receipt["page_words_written"] == 21 / 22
    # 18 words read exactly, and 17 of the other read, of which "Cose", "x", "Subtotal" and one more amount (2 words)
    # are not on the page
    assert receipt["words_read_not_on_the_page"] == 5 / (18 + 17)
    assert found["heldout_photos"]["receipt"]["layout_words_written"] == 1.0
    assert "run.json, heldout_unseen_layout, receipt (2 pages): layout words 64% written" in done.stdout


def test_a_result_without_reads_or_a_missing_file_is_one_line(tmp_path):
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"heldout_pages": {"worst": []}, "heldout_unseen_layout": {"examples": []}}))
    for argument, message in ((str(old), "kept no reads"), ("absent.json", "no such results file")):
        refused = _run(tmp_path, argument)
        assert refused.returncode != 0 and message in refused.stderr and "Traceback" not in refused.stderr
