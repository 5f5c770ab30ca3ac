"""bench/misread_characters.py: which characters of the test pages a reader misread, per kind and per field."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parents[2] / "bench" / "misread_characters.py"
RECEIPT = ("# TechGear Store\nReceipt #R-12222\n**Date:** 2026-06-05\n- Phone Case x2: $39.80\n**Subtotal:** $39.80\n"
           "**Total:** $47.76")


def _run(tmp_path, *arguments):
    return subprocess.run([sys.executable, str(SCRIPT), *arguments], capture_output=True, text=True, cwd=tmp_path)


def test_digits_are_counted_per_field_and_letters_apart(tmp_path):
    # One digit of the receipt's number misread, one letter of an item, and three characters inserted.
    read = RECEIPT.replace("#R-12222", "#R-12822").replace("Phone", "Phome").replace("$47.76", "$47.76 x1")
    result = tmp_path / "run.json"
    result.write_text(json.dumps({"heldout_pages": {"reads": [{"reference": RECEIPT, "read": RECEIPT},
                                                              {"reference": RECEIPT, "read": read}]}}))
    done = _run(tmp_path, str(result), "--out", "characters.json")
    assert done.returncode == 0, done.stderr
    receipt = json.loads((tmp_path / "characters.json").read_text())["run.json"]["receipt"]
    characters = receipt["characters"]
    digits = sum(c.isdigit() for c in RECEIPT)
    assert characters["digit"] == {"count": 2 * digits, "misread": 1 / (2 * digits)}
    assert characters["digit:number"] == {"count": 10, "misread": 0.1}  # 5 digits a page, one misread
    assert characters["digit:date"]["misread"] == characters["digit:item"]["misread"] == 0
    assert characters["digit:total"]["misread"] == 0
    assert characters["letter"]["misread"] == 1 / (2 * sum(c.isalpha() for c in RECEIPT))
    assert receipt["inserted"] == 3
    assert "run.json, receipt: misread digit" in done.stdout


def test_a_result_without_reads_is_one_line(tmp_path):
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"heldout_pages": {"worst": []}}))
    refused = _run(tmp_path, str(old))
    assert refused.returncode != 0 and "kept no reads" in refused.stderr and "Traceback" not in refused.stderr
