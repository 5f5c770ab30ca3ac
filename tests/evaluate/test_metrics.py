import pytest

from ocrloop.evaluate.metrics import (
    GroupMetrics,
    Normalization,
    ScoredPair,
    character_error_rate,
    compare_reports,
    comparison_markdown,
    evaluate_pairs,
    score_page,
    word_error_rate,
)


@pytest.mark.parametrize(
    ("reference", "hypothesis", "cer"),
    [
        ("kitten", "sitting", 3 / 6),  # 2 substitutions + 1 insertion
        ("abc", "abc", 0.0),
        ("abc", "", 1.0),  # 3 deletions over 3
        ("ab", "abcdef", 2.0),  # 4 insertions over 2: CER can exceed 100%
        ("", "", 0.0),
        ("", "xyz", 3.0),  # empty reference: denominator 1
    ],
)
def test_character_error_rate_hand_computed(reference, hypothesis, cer):
    assert character_error_rate(reference, hypothesis) == pytest.approx(cer)


def test_word_error_rate_hand_computed():
    assert word_error_rate("the total is 5", "the total was 5") == pytest.approx(1 / 4)
    assert word_error_rate("a b c", "") == pytest.approx(1.0)
    assert word_error_rate("", "") == 0.0
    assert word_error_rate("a b", "a b c d e f") == pytest.approx(2.0)


def test_normalization_options():
    assert character_error_rate("Total:  $5\n", "Total: $5") == 0.0  # whitespace collapsed by default
    assert character_error_rate("TOTAL", "total") == pytest.approx(1.0)
    assert character_error_rate("TOTAL", "total", Normalization(lowercase=True)) == 0.0
    markdown = "# Receipt\n**Total:** $5\n- Mouse: $5"
    assert character_error_rate(markdown, "Receipt Total: $5 Mouse: $5", Normalization(strip_markdown=True)) == 0.0
    assert character_error_rate(markdown, "Receipt Total: $5 Mouse: $5") > 0


def test_micro_and_macro_aggregation_by_group():
    pairs = [
        ScoredPair("abcd", "abcd", "receipt", "ecommerce"),  # 0 edits / 4
        ScoredPair("ab", "xb", "receipt", "saas"),  # 1 edit / 2
        ScoredPair("abcdefgh", "", "invoice", "saas"),  # 8 edits / 8
    ]
    report = evaluate_pairs(pairs)
    assert report.overall.pages == 3
    assert report.overall.cer == pytest.approx(9 / 14)
    assert report.overall.macro_cer == pytest.approx((0 + 0.5 + 1.0) / 3)
    assert report.by_category["receipt"].cer == pytest.approx(1 / 6)
    assert report.by_business["saas"].cer == pytest.approx(9 / 10)
    assert report.overall.accuracy == pytest.approx(1 - 9 / 14)
    worse = evaluate_pairs([ScoredPair("ab", "abcdef")])
    assert worse.overall.accuracy == 0.0  # accuracy never goes negative


def test_before_after_table():
    before = evaluate_pairs([ScoredPair("abcd", "abzz", "receipt"), ScoredPair("xy", "", "invoice")])
    after = evaluate_pairs([ScoredPair("abcd", "abcz", "receipt"), ScoredPair("xy", "xy", "invoice")])
    rows = {row.group: row for row in compare_reports(before, after)}
    assert rows["overall"].cer_before == pytest.approx(4 / 6)
    assert rows["overall"].cer_after == pytest.approx(1 / 6)
    assert rows["overall"].cer_change == pytest.approx(-0.75)
    assert rows["category=invoice"].cer_after == 0.0
    table = comparison_markdown(list(rows.values()))
    assert "| overall | 2 | 66.67% | 16.67% | -75.0% |" in table


def test_empty_group_is_zero_not_a_crash():
    empty = GroupMetrics()
    assert (empty.cer, empty.macro_cer, empty.accuracy) == (0.0, 0.0, 1.0)
    assert score_page("", "").character_error_rate == 0.0


def test_median_page_cer_and_normalized_edit_distance_bounded_by_one():
    pairs = [ScoredPair("abcd", "abcd"), ScoredPair("abcd", "abce"), ScoredPair("ab", "ab" + "x" * 8)]
    overall = evaluate_pairs(pairs).overall
    assert overall.median_cer == pytest.approx(0.25)  # page CERs 0, 0.25, 4.0
    assert overall.macro_cer == pytest.approx((0 + 0.25 + 4.0) / 3)
    # NED divides by the longer text: 8 insertions over 10 characters, not over 2
    assert overall.normalized_edit_distance == pytest.approx((0 + 0.25 + 0.8) / 3)
    assert score_page("ab", "ab" + "x" * 8).normalized_edit_distance <= 1.0
    assert set(overall.to_json()) >= {"median_cer", "normalized_edit_distance"}
    assert GroupMetrics().median_cer == 0.0


def test_the_bootstrap_interval_holds_the_pooled_cer_and_narrows_with_more_pages():
    def group(pairs):
        metrics = GroupMetrics()
        for reference, hypothesis in pairs:
            metrics.add(score_page(reference, hypothesis))
        return metrics

    # most pages read exactly, one in eight badly: which pages are drawn moves the pooled CER
    pages = [("receipt total 12.50", "receipt total 12.50")] * 7 + [("invoice due 2026-12-01", "invoice")]
    few, many = group(pages), group(pages * 16)
    low, high = few.cer_interval()
    assert low < few.cer < high and low >= 0
    assert few.cer_interval() == (low, high)  # the same seed, the same interval
    many_low, many_high = many.cer_interval()
    assert many.cer == pytest.approx(few.cer) and many_high - many_low < (high - low) / 2
    # pages that all read alike leave nothing to move; no pages, no interval
    assert group([("abc", "abd")] * 5).cer_interval() == pytest.approx((1 / 3, 1 / 3))
    assert GroupMetrics().cer_interval() == (0.0, 0.0)
