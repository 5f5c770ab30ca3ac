"""bench/seller_swaps.py: the test pages whose seller a reader misread, and what they cost its CER."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parents[2] / "bench" / "seller_swaps.py"
INVOICE = ("# INVOICE #5832\n**From:** {seller}\n**To:** Greenfield School\n| Description | Qty | Unit price | Amount |\n"
           "|---|---|---|---|\n| {item} | 5 | {price} | {amount} |\n**Amount:** {amount}")


def _page(seller: str, item: str, price: str, amount: str) -> str:
    return INVOICE.format(seller=seller, item=item, price=price, amount=amount)


def _run(tmp_path, *arguments):
    return subprocess.run([sys.executable, str(SCRIPT), *arguments], capture_output=True, text=True, cwd=tmp_path)


def test_a_page_whose_seller_was_misread_is_counted_and_its_share_of_the_cer_shown(tmp_path):
    right = _page("Northwind Media", "Podcast mic", "$89.00", "$445.00")
    reads = [{"reference": right, "read": right},
             # the seller misread, and that business's item and price written over the right quantity
             {"reference": right, "read": _page("PixelPeak Outlet", "Phone Case", "$19.90", "$99.50")},
             {"reference": right, "read": right.replace("Greenfield", "Greenfie1d")}]
    result = tmp_path / "run.json"
    result.write_text(json.dumps({"heldout_pages": {"reads": reads}}))
    done = _run(tmp_path, str(result), "--out", "swaps.json")
    assert done.returncode == 0, done.stderr
    found = json.loads((tmp_path / "swaps.json").read_text())["run.json"]
    assert found["pages"] == 3 and found["misread_seller"] == [1]
    assert found["examples"] == [{"page": 1, "seller": "Northwind Media", "read": "PixelPeak Outlet"}]
    assert 0 < found["cer_without_them"] < found["cer"]
    assert "run.json: 1 of 3 pages with a misread seller" in done.stdout


def test_a_result_without_reads_or_a_missing_file_is_one_line(tmp_path):
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"heldout_pages": {"worst": []}}))
    for argument, message in ((str(old), "kept no reads"), ("absent.json", "no such results file")):
        refused = _run(tmp_path, argument)
        assert refused.returncode != 0 and message in refused.stderr and "Traceback" not in refused.stderr
