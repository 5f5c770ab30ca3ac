"""Character and word error rates, aggregated overall, per category and per business.

CER = (substitutions + deletions + insertions) / reference length, over characters; WER the
same over whitespace-separated words. Both can exceed 100% (a hypothesis much longer than the
reference), as in the plan's 149% zero-shot CER. For an empty reference the denominator is 1,
so an empty hypothesis scores 0 and anything else scores its length. Accuracy is
``max(0, 1 - CER)``.

*Micro* aggregates divide total edits by total reference length (long pages weigh more);
*macro* aggregates average the per-page rates (every page weighs the same); the median page's CER
and the normalized edit distance (edits over the longer text, bounded by 1, averaged over pages,
as OmniDocBench reports it) are given beside them. ``GroupMetrics.cer_interval`` says how far the pooled CER of a
few dozen pages could move on other pages of the same kind (a bootstrap over the pages).
"""

from __future__ import annotations

import re
import unicodedata
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable

from rapidfuzz.distance import Levenshtein

_MARKDOWN_MARKUP = re.compile(r"(\*\*|__|`|^#{1,6}\s+|^\s*[-*+]\s+|^\s*\|?[-:| ]{3,}\|?\s*$)", re.MULTILINE)
_WHITESPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class Normalization:
    """How texts are normalized before comparison. The default compares exactly what was written,
    except that runs of whitespace count as one space."""

    collapse_whitespace: bool = True
    lowercase: bool = False
    strip_markdown: bool = False
    unicode_nfkc: bool = True

    def apply(self, text: str) -> str:
        if self.unicode_nfkc:
            text = unicodedata.normalize("NFKC", text)
        if self.strip_markdown:
            text = _MARKDOWN_MARKUP.sub("", text).replace("|", " ")
        if self.lowercase:
            text = text.lower()
        if self.collapse_whitespace:
            text = _WHITESPACE.sub(" ", text).strip()
        return text


@dataclass(frozen=True)
class PageScore:
    """Edit counts for one page."""

    char_edits: int
    char_reference: int
    word_edits: int
    word_reference: int
    char_hypothesis: int = 0

    @property
    def character_error_rate(self) -> float:
        return self.char_edits / max(self.char_reference, 1)

    @property
    def normalized_edit_distance(self) -> float:
        """Edits over the longer of the two texts: bounded by 1, as OmniDocBench reports it."""
        return self.char_edits / max(self.char_reference, self.char_hypothesis, 1)

    @property
    def word_error_rate(self) -> float:
        return self.word_edits / max(self.word_reference, 1)


def score_page(reference: str, hypothesis: str, normalization: Normalization = Normalization()) -> PageScore:
    """Edit distances between one reference and one hypothesis, after normalization."""
    ref, hyp = normalization.apply(reference), normalization.apply(hypothesis)
    ref_words, hyp_words = ref.split(), hyp.split()
    return PageScore(
        Levenshtein.distance(ref, hyp),
        len(ref),
        Levenshtein.distance(ref_words, hyp_words),
        len(ref_words),
        len(hyp),
    )


def character_error_rate(reference: str, hypothesis: str, normalization: Normalization = Normalization()) -> float:
    """CER of one page (can exceed 1.0)."""
    return score_page(reference, hypothesis, normalization).character_error_rate


def word_error_rate(reference: str, hypothesis: str, normalization: Normalization = Normalization()) -> float:
    """WER of one page (can exceed 1.0)."""
    return score_page(reference, hypothesis, normalization).word_error_rate


@dataclass
class GroupMetrics:
    """Aggregated scores of a group of pages."""

    pages: int = 0
    char_edits: int = 0
    char_reference: int = 0
    word_edits: int = 0
    word_reference: int = 0
    _cer_sum: float = 0.0
    _wer_sum: float = 0.0
    _ned_sum: float = 0.0
    page_scores: list[PageScore] = field(default_factory=list)

    def add(self, score: PageScore) -> None:
        self.pages += 1
        self.char_edits += score.char_edits
        self.char_reference += score.char_reference
        self.word_edits += score.word_edits
        self.word_reference += score.word_reference
        self._cer_sum += score.character_error_rate
        self._wer_sum += score.word_error_rate
        self._ned_sum += score.normalized_edit_distance
        self.page_scores.append(score)

    @property
    def page_cers(self) -> list[float]:
        """Each page's CER, in the order the pages were added."""
        return [score.character_error_rate for score in self.page_scores]

    @property
    def cer(self) -> float:
        """Micro CER: total character edits over total reference characters."""
        return self.char_edits / max(self.char_reference, 1)

    @property
    def wer(self) -> float:
        return self.word_edits / max(self.word_reference, 1)

    @property
    def macro_cer(self) -> float:
        return self._cer_sum / self.pages if self.pages else 0.0

    @property
    def macro_wer(self) -> float:
        return self._wer_sum / self.pages if self.pages else 0.0

    @property
    def median_cer(self) -> float:
        """The median page's CER (half the pages read at least this well)."""
        ordered = sorted(self.page_cers)
        middle = len(ordered) // 2
        return 0.0 if not ordered else ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2

    def cer_interval(self, confidence: float = 0.95, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
        """The percentile bootstrap interval of the pooled CER: the pages drawn again with replacement ``resamples``
        times (the same ``seed``, the same interval). Two readings whose intervals overlap widely may differ only in
        which pages they were scored on."""
        import numpy as np

        if not self.page_scores:
            return 0.0, 0.0
        edits, references = np.array([(s.char_edits, s.char_reference) for s in self.page_scores], dtype=np.float64).T
        draws = np.random.default_rng(seed).integers(0, len(edits), size=(resamples, len(edits)))
        pooled = edits[draws].sum(axis=1) / np.maximum(references[draws].sum(axis=1), 1)
        tail = (1 - confidence) / 2 * 100
        low, high = np.percentile(pooled, [tail, 100 - tail])
        return float(low), float(high)

    @property
    def normalized_edit_distance(self) -> float:
        """Mean over pages of edits over the longer text (bounded by 1)."""
        return self._ned_sum / self.pages if self.pages else 0.0

    @property
    def accuracy(self) -> float:
        return max(0.0, 1.0 - self.cer)

    def to_json(self) -> dict[str, float | int]:
        return {
            "pages": self.pages,
            "cer": self.cer,
            "wer": self.wer,
            "macro_cer": self.macro_cer,
            "macro_wer": self.macro_wer,
            "median_cer": self.median_cer,
            "normalized_edit_distance": self.normalized_edit_distance,
            "accuracy": self.accuracy,
        }


@dataclass
class EvaluationReport:
    """Scores overall, by category and by business."""

    overall: GroupMetrics = field(default_factory=GroupMetrics)
    by_category: dict[str, GroupMetrics] = field(default_factory=lambda: defaultdict(GroupMetrics))
    by_business: dict[str, GroupMetrics] = field(default_factory=lambda: defaultdict(GroupMetrics))

    def to_json(self) -> dict:
        return {
            "overall": self.overall.to_json(),
            "by_category": {k: v.to_json() for k, v in sorted(self.by_category.items())},
            "by_business": {k: v.to_json() for k, v in sorted(self.by_business.items())},
        }


@dataclass(frozen=True)
class ScoredPair:
    """A reference, a hypothesis and the groups the page belongs to."""

    reference: str
    hypothesis: str
    category: str = "unknown"
    business: str = "unknown"


def evaluate_pairs(pairs: Iterable[ScoredPair], normalization: Normalization = Normalization()) -> EvaluationReport:
    """Score every pair and aggregate overall, per category and per business."""
    report = EvaluationReport()
    for pair in pairs:
        score = score_page(pair.reference, pair.hypothesis, normalization)
        report.overall.add(score)
        report.by_category[pair.category].add(score)
        report.by_business[pair.business].add(score)
    return report


@dataclass(frozen=True)
class ComparisonRow:
    group: str
    pages: int
    cer_before: float
    cer_after: float
    wer_before: float
    wer_after: float

    @property
    def cer_change(self) -> float:
        """Relative CER change, negative when ``after`` is better (e.g. -0.66 for 66% fewer errors)."""
        if self.cer_before == 0:
            return 0.0 if self.cer_after == 0 else float("inf")
        return (self.cer_after - self.cer_before) / self.cer_before


def compare_reports(before: EvaluationReport, after: EvaluationReport) -> list[ComparisonRow]:
    """Rows of the before/after table: overall, then each category, then each business."""
    rows = [_row("overall", before.overall, after.overall)]
    for prefix, b_groups, a_groups in (
        ("category", before.by_category, after.by_category),
        ("business", before.by_business, after.by_business),
    ):
        for name in sorted(set(b_groups) | set(a_groups)):
            rows.append(_row(f"{prefix}={name}", b_groups.get(name, GroupMetrics()), a_groups.get(name, GroupMetrics())))
    return rows


def _row(name: str, before: GroupMetrics, after: GroupMetrics) -> ComparisonRow:
    return ComparisonRow(name, max(before.pages, after.pages), before.cer, after.cer, before.wer, after.wer)


def comparison_markdown(rows: list[ComparisonRow], before_name: str = "before", after_name: str = "after") -> str:
    """The before/after table as markdown, for reports and run cards."""
    lines = [
        f"| group | pages | CER {before_name} | CER {after_name} | change | WER {before_name} | WER {after_name} |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        change = "n/a" if row.cer_change == float("inf") else f"{row.cer_change:+.1%}"
        lines.append(
            f"| {row.group} | {row.pages} | {row.cer_before:.2%} | {row.cer_after:.2%} | {change} | "
            f"{row.wer_before:.2%} | {row.wer_after:.2%} |"
        )
    return "\n".join(lines)
