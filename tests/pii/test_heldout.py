"""PII in the forms people write: the issue's reported misses, and the held-out variant set's targets."""

from __future__ import annotations

import pytest

from ocrloop.pii import find_pii
from tests.pii.heldout import HELDOUT_SEED, heldout_cases, score


@pytest.mark.parametrize("kind, text, value", [
    ("ssn", "SSN 123.45.6789", "123.45.6789"),
    ("ssn", "SSN:123456789", "123456789"),
    ("ssn", "SSN#123-45-6789", "123-45-6789"),
    ("ssn", "123\u201345\u20136789", "123\u201345\u20136789"),
    ("ssn", "ssn: 123-45-\n6789", "123-45-\n6789"),
    ("credit_card", "4111.1111.1111.1111", "4111.1111.1111.1111"),
    ("credit_card", "Card#4111111111111111", "4111111111111111"),
    ("iban", "iban de89 3704 0044 0532 0130 00 and more", "de89 3704 0044 0532 0130 00"),
    ("phone", "Tel.+49 30 901820", "+49 30 901820"),
])
def test_forms_that_were_missed(kind, text, value):
    assert [(f.kind, text[f.start:f.end]) for f in find_pii(text)] == [(kind, value)]


def test_heldout_recall_and_precision_per_kind():
    cases = heldout_cases(HELDOUT_SEED)
    assert sum(c.kind is not None for c in cases) >= 150 and sum(c.kind is None for c in cases) >= 150
    report = score(lambda text: [(f.kind, f.start, f.end) for f in find_pii(text)])
    assert set(report) == {"ssn", "credit_card", "iban", "email", "phone", "secret"}
    for kind, row in report.items():
        assert row["recall"] >= 0.98 and row["precision"] >= 0.98, (kind, row)
