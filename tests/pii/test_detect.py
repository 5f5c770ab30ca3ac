"""The PII detector: precision and recall per kind on documents with planted PII and look-alikes."""

from __future__ import annotations

from collections import Counter

import pytest

from ocrloop.data.synth import planted_pii_documents
from ocrloop.pii import PII_KINDS, PiiRejected, apply_pii_policy, find_pii


def test_precision_and_recall_per_kind_on_planted_documents():
    found_right, found_wrong, missed = Counter(), Counter(), Counter()
    documents = planted_pii_documents(300, seed=2026)
    for document in documents:
        found = {(f.kind, document.text[f.start:f.end]) for f in find_pii(document.text)}
        planted = set(document.planted)
        for kind, _ in found & planted:
            found_right[kind] += 1
        for kind, _ in found - planted:
            found_wrong[kind] += 1
        for kind, _ in planted - found:
            missed[kind] += 1
    assert sum(len(d.look_alikes) for d in documents) > 600
    report = {}
    for kind in PII_KINDS:
        precision = found_right[kind] / max(found_right[kind] + found_wrong[kind], 1)
        recall = found_right[kind] / max(found_right[kind] + missed[kind], 1)
        report[kind] = (round(precision, 3), round(recall, 3), found_right[kind] + missed[kind])
    print("kind: (precision, recall, planted)", report)
    for kind, (precision, recall, planted) in report.items():
        assert planted >= 50, kind
        assert precision >= 0.97 and recall >= 0.97, (kind, report[kind])


@pytest.mark.parametrize("text", [
    "Order ORD-2025-118734 shipped on 2025-03-15",
    "Invoice ID: INV-2025-00042, Total: $1,234.56",
    "EIN: 12-3456789 and SKU 1731-815-7193",
    "Tracking: 1Z999AA10123456784, Account no. 4155552671",
    "Password reset instructions were sent on 2025-01-02.",
    "Card ending in 1111, due 03/15/2025",
])
def test_look_alikes_are_not_pii(text):
    assert find_pii(text) == []


def test_policies():
    text = "Jane: jane.doe@example.com, SSN 123-45-6789, card 4111 1111 1111 1111, **Password:** hunter2!!"
    assert apply_pii_policy(text, "allow") == (text, {"email": 1, "ssn": 1, "credit_card": 1, "secret": 1})
    redacted, counts = apply_pii_policy(text, "redact")
    assert redacted == "Jane: [EMAIL], SSN [SSN], card [CREDIT_CARD], **Password:** [SECRET]"
    with pytest.raises(PiiRejected) as rejected:
        apply_pii_policy(text, "reject")
    assert rejected.value.counts == counts
    assert "123-45-6789" not in str(rejected.value) and "ssn x1" in str(rejected.value)
    assert apply_pii_policy("nothing personal here", "reject") == ("nothing personal here", {})
    # Luhn and mod-97 decide: one digit off is not a card or an IBAN.
    assert [f.kind for f in find_pii("4111 1111 1111 1112 DE89 3704 0044 0532 0130 01")] == []
    assert [f.kind for f in find_pii("DE89 3704 0044 0532 0130 00 and +44 20 7946 0958")] == ["iban", "phone"]
