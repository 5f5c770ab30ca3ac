"""Synthetic business documents with exact markdown ground truth.

Receipts, invoices, contracts (multi-page PDFs) and tax forms, rendered with the DejaVu fonts
that ship inside matplotlib (so nothing is downloaded), with varied layouts and controllable
scan noise: rotation, blur, pixel noise and JPEG artefacts. The same seed gives the same bytes.

The ground truth is the markdown a good OCR model should produce for the page: ``# `` marks
the title, ``**label:**`` bold labels, ``- `` list items, ``|`` table rows.
"""

from __future__ import annotations

import datetime as dt
import functools
import random
import re
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from ocrloop.config import BUSINESS_TYPES, DOCUMENT_CATEGORIES, DataConfig
from ocrloop.data.add import AddResult, IncomingDocument, add_documents
from ocrloop.data.files import inspect_file
from ocrloop.data.fonts import FontFamily, font_families

STYLES = ("scan", "photo")
CATEGORY_BUSINESSES = {
    "receipt": ("ecommerce", "content"),
    "invoice": ("saas", "ecommerce", "accounting", "content"),
    "contract": ("legal", "saas", "content"),
    "tax_form": ("accounting",),
}

_COMPANIES = {
    "ecommerce": ["TechGear Store", "Cable Corner", "Home & Hearth Goods", "Urban Sprout Market", "PixelPeak Outlet"],
    "content": ["DevInsights Blog", "Northwind Media", "Quill & Pixel Studio", "Bright Lens Video"],
    "saas": ["TaskFlow Pro", "CloudLedger", "MetricHub", "SignalDesk", "FormForge"],
    "legal": ["Harper & Lowe LLP", "Meridian Legal Group", "Atlas Counsel"],
    "accounting": ["Ledgerline Accounting", "Summit Tax Partners", "Clearbooks CPA"],
}
_STREETS = ["Market Street", "Harbour Road", "Elm Avenue", "Station Square", "Mill Lane", "King's Parade"]
_TOWNS = ["Springfield", "Riverton", "Lakeside", "Fairview", "Oakridge"]
_CLIENTS = ["Client ABC", "Acme Corp", "Blue River Foods", "Orion Logistics", "Nimbus Health", "Greenfield School", "Vertex Labs"]
_PEOPLE = ["Jane Doe", "Omar Haddad", "Li Wei", "Maria Santos", "Tom Becker", "Aisha Khan", "Ivan Petrov", "Sofia Rossi"]
_ITEMS = {
    "ecommerce": [("Wireless Mouse", 45.0), ("USB-C Cable", 12.5), ("Laptop Stand", 70.0), ("Desk Lamp", 34.99),
                  ("Notebook A5", 6.25), ("Phone Case", 19.9), ("HDMI Adapter", 24.0), ("Coffee Beans 1kg", 18.4)],
    "content": [("Stock photo license", 29.0), ("Podcast mic", 89.0), ("Editing hours", 55.0), ("Ebook cover design", 120.0),
                ("Newsletter ad slot", 250.0), ("Transcription", 42.5)],
    "saas": [("Pro plan (monthly)", 19.0), ("Team seats", 12.0), ("API overage", 0.35), ("Premium support", 99.0),
             ("Storage add-on 100 GB", 5.0), ("Onboarding session", 150.0)],
    "accounting": [("Bookkeeping (monthly)", 320.0), ("Payroll run", 85.0), ("Tax filing", 450.0), ("Audit preparation", 1200.0)],
    "legal": [("Contract review", 400.0), ("Consultation hour", 275.0), ("Filing fee", 95.0)],
}
# Every seller's and item's name, of every business: what a lesson may swap a document's own names for.
COMPANY_NAMES = tuple(sorted({name for names in _COMPANIES.values() for name in names}))
ITEM_NAMES = tuple(sorted({name for items in _ITEMS.values() for name, _ in items}))


def names_pattern(names: tuple[str, ...]) -> re.Pattern:
    """A pattern that finds any of ``names``, the longest first: a name inside a longer one is never found alone."""
    return re.compile("|".join(re.escape(name) for name in sorted(names, key=len, reverse=True)))


_CLAUSES = [
    ("Services", "The Provider shall deliver the services described in Schedule A with reasonable skill and care, "
                 "and shall keep the Client informed of progress at agreed intervals."),
    ("Fees", "The Client shall pay the fees set out in Schedule B within thirty days of each invoice. "
             "Late amounts bear interest at one percent per month."),
    ("Term", "This Agreement starts on the effective date and continues for twelve months unless ended earlier "
             "under the termination clause."),
    ("Confidentiality", "Each party shall keep the other party's confidential information secret and use it only "
                        "to perform this Agreement."),
    ("Termination", "Either party may end this Agreement with thirty days written notice, or at once if the other "
                    "party commits a material breach that is not remedied within fourteen days."),
    ("Liability", "Neither party is liable for indirect or consequential loss. Total liability is limited to the "
                  "fees paid in the twelve months before the claim."),
    ("Intellectual Property", "All work product created under this Agreement belongs to the Client once the related "
                              "fees are paid in full."),
    ("Governing Law", "This Agreement is governed by the laws of the State of Delaware."),
]
# Every word of three or more letters that the documents' generators write in names, items, clauses, people and
# places (none of a receipt's or an invoice's labels: those come from the layouts): what a lesson may relabel with.
VOCABULARY = tuple(sorted({word for text in (*COMPANY_NAMES, *ITEM_NAMES, *_CLIENTS, *_PEOPLE, *_STREETS, *_TOWNS,
                                             *(part for clause in _CLAUSES for part in clause))
                           for word in re.findall(r"[A-Za-z]{3,}", text)}))


@dataclass
class SynthOptions:
    """What to generate. ``noise`` in [0, 1] scales rotation, blur, pixel noise and JPEG loss together."""

    n: int = 40
    categories: tuple[str, ...] = DOCUMENT_CATEGORIES
    businesses: tuple[str, ...] | None = None  # restrict to these business types
    seed: int = 0
    noise: float = 0.3
    scale: float = 1.0  # 1.0: letter pages of 850x1100 px; smaller for fast tests
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    jpeg_fraction: float = 0.5  # share of single-page documents written as JPEG "scans"
    # "scan": flat pages with scan noise; "photo": phone photos of paper (see ``photograph``), always JPEG
    style: str = "scan"
    # With style "photo": False leaves the photographed documents unphotographed, as clean flat PNGs (the same texts,
    # layouts and fonts for the same seed: a control that tells what the photo costs from what the layout does).
    photographed: bool = True
    fit_to_content: bool = False  # invoices and tax forms end below their last line, as receipts do
    # Layouts to draw from, by index into DOCUMENT_TEMPLATES (a category uses those it has); None: the first only.
    templates: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        unknown = [c for c in self.categories if c not in CATEGORY_BUSINESSES]
        if unknown:
            raise ValueError(f"unknown categories {unknown}; choose from {', '.join(DOCUMENT_CATEGORIES)}")
        if self.businesses is not None:
            bad = [b for b in self.businesses if b not in BUSINESS_TYPES]
            if bad:
                raise ValueError(f"unknown business types {bad}; choose from {', '.join(BUSINESS_TYPES)}")
            if not any(set(CATEGORY_BUSINESSES[c]) & set(self.businesses) for c in self.categories):
                raise ValueError("no chosen category is made by the chosen business types")
        if self.n < 1:
            raise ValueError("n must be at least 1")
        if not 0 <= self.noise <= 1:
            raise ValueError("noise must be between 0 and 1")
        if not 0.1 <= self.scale <= 4:
            raise ValueError("scale must be between 0.1 and 4")
        if self.style not in STYLES:
            raise ValueError(f"unknown style {self.style!r}; choose from {', '.join(STYLES)}")
        if self.templates is not None:
            lacking = [c for c in self.categories if not self.category_templates(c)]
            if not self.templates or lacking:
                have = ", ".join(f"{c} 0-{len(DOCUMENT_TEMPLATES[c]) - 1}" for c in lacking or self.categories)
                raise ValueError(f"no template {list(self.templates)} for {', '.join(lacking) or 'any category'} (templates: {have})")

    def category_templates(self, category: str) -> tuple[int, ...]:
        """The templates a document of ``category`` is drawn in."""
        chosen = (0,) if self.templates is None else self.templates
        return tuple(t for t in dict.fromkeys(chosen) if 0 <= t < len(DOCUMENT_TEMPLATES[category]))


@dataclass
class SynthDocument:
    """One rendered document: pages as images, one markdown text per page."""

    category: str
    business: str
    pages: list[Image.Image]
    texts: list[str]
    is_pdf: bool
    is_jpeg: bool
    split: str = "train"
    name: str = ""
    dpi: float = 100.0
    jpeg_quality: int = 90
    template: int = 0  # index into DOCUMENT_TEMPLATES[category]


def _font_families() -> dict[str, FontFamily]:
    """The three DejaVu families every document style draws from (the same pages on every machine)."""
    families = font_families()
    return {"sans": families["dejavu-sans"], "serif": families["dejavu-serif"], "mono": families["dejavu-mono"]}


def _money(value: float) -> str:
    return f"${value:,.2f}"


def _date(rng: random.Random) -> dt.date:
    return dt.date(2025, 1, 1) + dt.timedelta(days=rng.randrange(0, 700))


def _priced_lines(rng: random.Random, business: str, fewest: int, most: int, max_quantity: int,
                  line: Callable[[str, int, float], str]) -> tuple[list[str], float]:
    """``fewest`` to ``most`` distinct items of ``business``, 1 to ``max_quantity`` of each, each written by
    ``line(name, quantity, unit price)``; and their total."""
    lines, total = [], 0.0
    for name, price in rng.sample(_ITEMS[business], k=rng.randint(fewest, min(most, len(_ITEMS[business])))):
        quantity = rng.randint(1, max_quantity)
        total += quantity * price
        lines.append(line(name, quantity, price))
    return lines, total


def _receipt(rng: random.Random, business: str) -> list[str]:
    store = rng.choice(_COMPANIES[business])
    chosen = rng.sample(_ITEMS[business], k=rng.randint(2, min(6, len(_ITEMS[business]))))
    lines = [f"# {store}", f"Receipt #R-{rng.randint(10000, 99999)}", f"**Date:** {_date(rng).isoformat()}", "**Items:**"]
    subtotal = 0.0
    for name, price in chosen:
        quantity = rng.randint(1, 3)
        subtotal += quantity * price
        lines.append(f"- {name} x{quantity}: {_money(quantity * price)}")
    rate = rng.choice([0, 5, 8, 10, 20])
    tax = round(subtotal * rate / 100, 2)
    lines += [f"**Subtotal:** {_money(subtotal)}", f"**Tax ({rate}%):** {_money(tax)}", f"**Total:** {_money(subtotal + tax)}"]
    lines.append(rng.choice(["Thank you for shopping with us!", "Returns within 30 days with receipt.", "Paid by card"]))
    return lines


def _invoice(rng: random.Random, business: str) -> list[str]:
    issued = _date(rng)
    lines = [
        f"# INVOICE #{rng.randint(1000, 9999)}",
        f"**From:** {rng.choice(_COMPANIES[business])}",
        f"**To:** {rng.choice(_CLIENTS)}",
        f"**Date:** {issued.isoformat()}",
        f"**Due:** {(issued + dt.timedelta(days=rng.choice([14, 30, 45]))).isoformat()}",
        "| Description | Qty | Unit price | Amount |",
        "|---|---|---|---|",
    ]
    items, total = _priced_lines(rng, business, 1, 5, 12, lambda name, quantity, price:
                                 f"| {name} | {quantity} | {_money(price)} | {_money(quantity * price)} |")
    lines += [*items, f"**Amount:** {_money(total)}"]
    return lines


def _contract(rng: random.Random, business: str) -> list[str]:
    provider = rng.choice(_COMPANIES[business])
    client = rng.choice(_CLIENTS)
    title = rng.choice(["SERVICE AGREEMENT", "CONSULTING AGREEMENT", "MASTER SERVICES AGREEMENT"])
    lines = [f"# {title}", f"**Between:** {provider} and {client}", f"**Effective date:** {_date(rng).isoformat()}"]
    clauses = rng.sample(_CLAUSES, k=rng.randint(4, len(_CLAUSES)))
    for number, (heading, body) in enumerate(clauses, start=1):
        lines.append(f"## {number}. {heading}")
        lines.append(body)
    lines.append("## Schedule A")
    lines += [f"- {name}" for name, _ in rng.sample(_ITEMS[business], k=min(3, len(_ITEMS[business])))]
    provider_signer, client_signer = rng.sample(_PEOPLE, k=2)
    lines += [f"**Signed for the Provider:** {provider_signer}", f"**Signed for the Client:** {client_signer}"]
    return lines


def _tax_form(rng: random.Random, business: str) -> list[str]:
    wages = rng.randint(25_000, 180_000) + rng.choice([0, 0.5, 0.25])
    withheld = round(wages * rng.uniform(0.1, 0.25), 2)
    return [
        f"# Form W-2 Wage and Tax Statement {rng.choice([2024, 2025])}",
        f"**Employer:** {rng.choice(_CLIENTS)}",
        f"**Employee:** {rng.choice(_PEOPLE)}",
        f"**Prepared by:** {rng.choice(_COMPANIES[business])}",
        f"**Box 1 Wages:** {_money(wages)}",
        f"**Box 2 Federal tax withheld:** {_money(withheld)}",
        f"**Box 3 Social security wages:** {_money(min(wages, 168_600))}",
        f"**Box 4 Social security tax:** {_money(round(min(wages, 168_600) * 0.062, 2))}",
    ]


def _register_tape(rng: random.Random, business: str) -> list[str]:
    """A receipt as a till prints it: capitals, quantities before names, unit prices, the card's last digits."""
    lines = [f"# {rng.choice(_COMPANIES[business]).upper()}",
             f"{rng.randint(1, 999)} {rng.choice(_STREETS)}, {rng.choice(_TOWNS)}",
             f"Order no. {rng.randint(100000, 999999)}",
             f"{_date(rng).strftime('%d/%m/%Y')} {rng.randint(7, 21):02d}:{rng.randint(0, 59):02d}"]
    items, total = _priced_lines(rng, business, 2, 5, 4, lambda name, quantity, price:
                                 f"{quantity} x {name} @ {_money(price)} = {_money(quantity * price)}")
    lines += [*items, f"**TOTAL {_money(total)}**", f"Card ending in {rng.randint(1000, 9999)}"]
    return lines


def _receipt_table(rng: random.Random, business: str) -> list[str]:
    """A receipt laid out as a small table, with the date written out."""
    lines = [f"## {rng.choice(_COMPANIES[business])}", f"**Receipt no.** {rng.randint(1000, 9999)}-{rng.randint(10, 99)}",
             f"**Date** {_date(rng).strftime('%B %d, %Y')}", "| Item | Qty | Price |", "|---|---|---|"]
    items, total = _priced_lines(rng, business, 2, 5, 3, lambda name, quantity, price:
                                 f"| {name} | {quantity} | {_money(quantity * price)} |")
    lines += [*items, f"**Total due:** {_money(total)}"]
    return lines


def _invoice_list(rng: random.Random, business: str) -> list[str]:
    """An invoice whose lines are a list, with payment terms instead of a due date."""
    issued = _date(rng)
    lines = [f"# {rng.choice(_COMPANIES[business])}", f"## Invoice INV-{issued.year}-{rng.randint(1, 9999):04d}",
             f"**Bill to:** {rng.choice(_CLIENTS)}", f"**Issued:** {issued.strftime('%B %d, %Y')}",
             f"**Payment terms:** Net {rng.choice([15, 30, 60])}"]
    items, total = _priced_lines(rng, business, 1, 4, 10, lambda name, quantity, price:
                                 f"- {name}: {quantity} at {_money(price)} = {_money(quantity * price)}")
    lines += [*items, f"**Total due:** {_money(total)}"]
    return lines


def _tax_invoice(rng: random.Random, business: str) -> list[str]:
    """A tax invoice: seller and buyer, numbered per year, net, VAT and gross amounts."""
    issued = _date(rng)
    lines = ["# TAX INVOICE", f"**Seller:** {rng.choice(_COMPANIES[business])}", f"**Buyer:** {rng.choice(_CLIENTS)}",
             f"**Number:** {rng.randint(100, 999)}/{issued.year}", f"**Invoice date:** {issued.strftime('%d.%m.%Y')}",
             "| Item | Qty | Net amount |", "|---|---|---|"]
    items, net = _priced_lines(rng, business, 1, 4, 8, lambda name, quantity, price:
                               f"| {name} | {quantity} | {_money(quantity * price)} |")
    lines += items
    rate = rng.choice([7, 19, 20])
    vat = round(net * rate / 100, 2)
    lines += [f"**Net:** {_money(net)}", f"**VAT {rate}%:** {_money(vat)}", f"**Gross:** {_money(net + vat)}"]
    return lines


# The layouts each category is drawn in; the first is every category's default (lessons draw from it too).
# Other templates exist so that a test set can hold layouts its training set never saw (SynthOptions.templates).
DOCUMENT_TEMPLATES = {"receipt": (_receipt, _register_tape, _receipt_table), "invoice": (_invoice, _invoice_list, _tax_invoice),
                      "contract": (_contract,), "tax_form": (_tax_form,)}


def _segments(markdown_line: str) -> tuple[str, list[tuple[str, bool]]]:
    """Split a markdown line into its style and (text, bold) runs as they appear on the page."""
    if markdown_line.startswith("## "):
        return "heading", [(markdown_line[3:], True)]
    if markdown_line.startswith("# "):
        return "title", [(markdown_line[2:], True)]
    if markdown_line.startswith("|"):
        return "table", [(markdown_line, False)]
    runs = []
    for index, part in enumerate(markdown_line.split("**")):
        if part:
            runs.append((part, index % 2 == 1))
    return "body", runs


class PageRenderer:
    """Lays out markdown lines on pages of fixed width, wrapping paragraphs, paginating contracts."""

    def __init__(self, rng: random.Random, fonts: FontFamily, width: int, height: int | None, scale: float, paginate: bool):
        self.rng = rng
        self.fonts = fonts
        self.width = width
        self.height = height
        self.scale = scale
        self.paginate = paginate
        self.margin = int(rng.uniform(40, 70) * scale)
        self.body_size = max(8, int(rng.choice([15, 16, 17, 18]) * scale * (1.3 if paginate else 1.0)))
        self.align_title = rng.choice(["left", "center"])
        self.boxed = False

    def _line_height(self, size: int) -> int:
        return int(size * 1.45)

    def _wrap(self, runs: list[tuple[str, bool]], size: int) -> list[list[tuple[str, bool]]]:
        usable = self.width - 2 * self.margin
        words = [(word, bold) for text, bold in runs for word in text.split()]
        lines: list[list[tuple[str, bool]]] = [[]]
        used = 0.0
        for word, bold in words:
            font = self.fonts.get(bold, size)
            token = word if not lines[-1] else " " + word
            if lines[-1] and used + font.getlength(token) > usable:
                lines.append([])
                used, token = 0.0, word
            lines[-1].append((token, bold))
            used += font.getlength(token)
        return lines

    def render(self, markdown_lines: list[str]) -> tuple[list[Image.Image], list[str]]:
        blocks = []  # (markdown, style, wrapped runs, size)
        for line in markdown_lines:
            style, runs = _segments(line)
            size = {"title": int(self.body_size * 1.5), "heading": int(self.body_size * 1.15)}.get(style, self.body_size)
            wrapped = [[(text, False)] for text in [line]] if style == "table" else self._wrap(runs, size)
            blocks.append((line, style, wrapped, size))

        pages: list[list[tuple]] = [[]]
        y = self.margin
        limit = (self.height - self.margin) if self.height else None
        for block in blocks:
            needed = len(block[2]) * self._line_height(block[3]) + int(self.body_size * 0.4)
            if self.paginate and limit and y + needed > limit and pages[-1]:
                pages.append([])
                y = self.margin
            pages[-1].append((block, y))
            y += needed
        images, texts = [], []
        for placed in pages:
            page_height = self.height or (placed[-1][1] + 4 * self.body_size + self.margin)
            image = Image.new("RGB", (self.width, page_height), "white")
            draw = ImageDraw.Draw(image)
            for (markdown, style, wrapped, size), top in placed:
                self._draw_block(draw, style, wrapped, size, top, markdown)
            images.append(image)
            texts.append("\n".join(block[0] for block, _ in placed))
        return images, texts

    def _draw_block(self, draw: ImageDraw.ImageDraw, style: str, wrapped, size: int, top: int, markdown: str) -> None:
        if style == "table":
            self._draw_table_row(draw, markdown, top, size)
            return
        for index, runs in enumerate(wrapped):
            y = top + index * self._line_height(size)
            total = sum(self.fonts.get(bold, size).getlength(text) for text, bold in runs)
            x = self.margin
            if style == "title" and self.align_title == "center":
                x = int((self.width - total) / 2)
            if self.boxed and style == "body":
                draw.rectangle([self.margin - 6, y - 4, self.width - self.margin + 6, y + self._line_height(size) - 2], outline=(90, 90, 90))
            for text, bold in runs:
                font = self.fonts.get(bold, size)
                draw.text((x, y), text, fill=(20, 20, 20), font=font)
                x += font.getlength(text)

    def _draw_table_row(self, draw: ImageDraw.ImageDraw, markdown: str, top: int, size: int) -> None:
        cells = [cell.strip() for cell in markdown.strip("|").split("|")]
        usable = self.width - 2 * self.margin
        if all(set(cell) <= {"-", ":"} for cell in cells):
            draw.line([self.margin, top + size // 2, self.width - self.margin, top + size // 2], fill=(60, 60, 60), width=max(1, int(2 * self.scale)))
            return
        # Four columns: description, quantity, unit price, amount. Fewer: the description gets the room.
        widths = [0.46, 0.12, 0.2, 0.22] if len(cells) >= 4 else [0.6, 0.15, 0.25][: len(cells)]
        font = self.fonts.get(False, size)
        x = float(self.margin)
        for cell, share in zip(cells, widths):
            draw.text((x, top), cell, fill=(20, 20, 20), font=font)
            # A cell longer than its column pushes the next one right, as a till does, instead of running into it.
            x += max(share * usable, font.getlength(cell + "  "))


def add_scan_noise(image: Image.Image, rng: random.Random, nrng: np.random.Generator, noise: float) -> Image.Image:
    """``image`` as scanned: rotation, blur and pixel noise together, scaled by ``noise`` in [0, 1]."""
    if noise <= 0:
        return image
    angle = rng.uniform(-2.0, 2.0) * noise
    if abs(angle) > 0.05:
        image = image.rotate(angle, resample=Image.Resampling.BICUBIC, expand=False, fillcolor="white")
    radius = rng.uniform(0, 1.0) * noise
    if radius > 0.15:
        image = image.filter(ImageFilter.GaussianBlur(radius))
    pixels = np.asarray(image, dtype=np.float32)
    pixels = pixels + nrng.normal(0, 14 * noise, size=pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _perspective_coefficients(source: list[tuple[float, float]], target: list[tuple[float, float]]) -> list[float]:
    """PIL's 8 perspective coefficients mapping each output point in ``target`` to its input point in ``source``."""
    rows, values = [], []
    for (x, y), (u, v) in zip(target, source):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        values += [u, v]
    return np.linalg.solve(np.asarray(rows, dtype=np.float64), np.asarray(values, dtype=np.float64)).tolist()


def photograph(page: Image.Image, rng: random.Random, nrng: np.random.Generator) -> tuple[Image.Image, int]:
    """``page`` as a phone photo of the printed paper, and the JPEG quality (20-35) to save it with.

    Faded ink on tinted paper, the sheet held at an angle on a desk (perspective), light falling off
    across it, a hand's or phone's shadow over part of it, focus blur, sensor noise. The text shrinks
    by at most a fifth, so a person still reads it; Tesseract mostly does not."""
    width, height = page.size
    ink = np.asarray(page.convert("L"), dtype=np.float32)
    fade = rng.uniform(0.55, 0.8)  # ink reaches 55-80 % of full black
    paper = np.array([rng.uniform(225, 250), rng.uniform(220, 245), rng.uniform(205, 235)], dtype=np.float32)
    sheet = paper[None, None, :] * (1 - fade * (255 - ink)[..., None] / 255)

    # The sheet fills 80-90 % of the frame; its corners move by up to 5 % of the frame.
    fill = rng.uniform(0.8, 0.9)
    frame_w, frame_h = int(width / fill), int(height / fill)
    left, top = (frame_w - width) / 2, (frame_h - height) / 2
    wobble = [(rng.uniform(-0.05, 0.05) * frame_w, rng.uniform(-0.05, 0.05) * frame_h) for _ in range(4)]
    corners = [(left, top), (left + width, top), (left + width, top + height), (left, top + height)]
    placed = [(x + dx, y + dy) for (x, y), (dx, dy) in zip(corners, wobble)]
    source_corners = [(0.0, 0.0), (float(width), 0.0), (float(width), float(height)), (0.0, float(height))]
    coefficients = _perspective_coefficients(source_corners, placed)
    sheet_image = Image.fromarray(np.clip(sheet, 0, 255).astype(np.uint8))
    warped = sheet_image.transform((frame_w, frame_h), Image.Transform.PERSPECTIVE, coefficients, Image.Resampling.BICUBIC)
    mask = Image.new("L", (width, height), 255).transform((frame_w, frame_h), Image.Transform.PERSPECTIVE, coefficients,
                                                           Image.Resampling.BILINEAR)
    desk_color = tuple(int(c) for c in nrng.integers(40, 150, size=3))
    photo = Image.composite(warped, Image.new("RGB", (frame_w, frame_h), desk_color), mask)

    # Light: a gradient across the frame, and a soft shadow on one side of a random line.
    pixels = np.asarray(photo, dtype=np.float32)
    ys, xs = np.mgrid[0:frame_h, 0:frame_w].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    along = (xs * np.cos(angle) + ys * np.sin(angle)) / max(frame_w, frame_h)
    light = rng.uniform(0.95, 1.08) - rng.uniform(0.2, 0.35) * (along - along.min()) / max(np.ptp(along), 1e-6)
    cut = rng.uniform(0.25, 0.75)
    shadow_angle = rng.uniform(0, 2 * np.pi)
    side = (xs / frame_w - 0.5) * np.cos(shadow_angle) + (ys / frame_h - 0.5) * np.sin(shadow_angle) + 0.5 - cut
    softness = rng.uniform(0.03, 0.1)
    shadow = 1 - rng.uniform(0.25, 0.45) / (1 + np.exp(-side / softness))
    pixels = pixels * (light * shadow)[..., None]
    photo = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    photo = photo.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 1.1)))
    noisy = np.asarray(photo, dtype=np.float32) + nrng.normal(0, rng.uniform(3, 7), size=(frame_h, frame_w, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)), rng.randint(20, 35)


def pick_template(templates: tuple[int, ...], rng: random.Random) -> int:
    """One of ``templates``, drawn from ``rng`` only when there is a choice: documents of one layout stay those of
    versions that had one layout only, seed for seed."""
    return templates[0] if len(templates) == 1 else rng.choice(templates)


def render_document(category: str, business: str, rng: random.Random, options: SynthOptions,
                    families: dict[str, FontFamily],
                    rewrite: Callable[[list[str]], list[str]] | None = None) -> SynthDocument:
    """Render one document of ``category`` for ``business``; ``rewrite`` changes its markdown lines first."""
    # Noise draws from its own generator so the same seed gives the same texts at any noise level.
    noise_seed = rng.randrange(2**32)
    template = pick_template(options.category_templates(category), rng)
    markdown_lines = DOCUMENT_TEMPLATES[category][template](rng, business)
    if rewrite is not None:
        markdown_lines = rewrite(markdown_lines)
    family = rng.choice(["mono", "sans"] if category == "receipt" else ["sans", "serif", "mono"])
    scale = options.scale * rng.uniform(0.9, 1.1)
    if category == "receipt":
        width, height = int(rng.uniform(380, 480) * scale), None
    else:
        width, height = int(850 * options.scale), None if options.fit_to_content and category != "contract" else int(1100 * options.scale)
    renderer = PageRenderer(rng, families[family], width, height, scale, paginate=category == "contract")
    renderer.boxed = category == "tax_form"
    pages, texts = renderer.render(markdown_lines)
    noise_rng, pixel_rng = random.Random(noise_seed), np.random.default_rng(noise_seed)
    is_pdf = category == "contract"
    quality = 90
    if options.style == "photo" and not options.photographed:  # no draw from ``rng``: the next document stays the same
        is_jpeg = False
    elif options.style == "photo":
        photos = [photograph(page, noise_rng, pixel_rng) for page in pages]
        pages, quality = [p for p, _ in photos], photos[0][1]
        is_jpeg = not is_pdf
    else:
        pages = [add_scan_noise(page, noise_rng, pixel_rng, options.noise) for page in pages]
        is_jpeg = not is_pdf and rng.random() < options.jpeg_fraction
    return SynthDocument(category, business, pages, texts, is_pdf, is_jpeg, dpi=100 * options.scale, jpeg_quality=quality,
                         template=template)


def sample_texts(n: int, seed: int = 0) -> list[str]:
    """Ground-truth texts of ``n`` documents without rendering them (e.g. to train a tokenizer)."""
    rng = random.Random(seed)
    categories = list(CATEGORY_BUSINESSES)
    return [
        "\n".join(DOCUMENT_TEMPLATES[c][0](rng, rng.choice(CATEGORY_BUSINESSES[c])))
        for c in (categories[i % len(categories)] for i in range(n))
    ]


def _split_plan(n: int, fractions: tuple[float, float, float], rng: random.Random) -> list[str]:
    n_val = round(n * fractions[1])
    n_test = round(n * fractions[2])
    if n >= 3:
        n_val, n_test = max(1, n_val), max(1, n_test)
    plan = ["val"] * n_val + ["test"] * n_test
    plan += ["train"] * (n - len(plan))
    rng.shuffle(plan)
    return plan


def generate_documents(options: SynthOptions) -> list[SynthDocument]:
    """Render ``options.n`` documents, deterministic for ``options.seed``, assigned to splits."""
    rng = random.Random(options.seed)
    families = _font_families()
    allowed = {
        c: [b for b in CATEGORY_BUSINESSES[c] if options.businesses is None or b in options.businesses]
        for c in options.categories
    }
    categories = [c for c in options.categories if allowed[c]]
    splits = _split_plan(options.n, options.split_fractions, rng)
    documents = []
    for index in range(options.n):
        category = categories[index % len(categories)]
        business = rng.choice(allowed[category])
        document = render_document(category, business, rng, options, families)
        document.split = splits[index]
        document.name = f"{category}_s{options.seed}_{index:05d}"
        documents.append(document)
    return documents


_PDF_DATE = time.gmtime(1735689600)  # 2025-01-01; PIL wants a struct_time


def write_document(document: SynthDocument, folder: Path) -> Path:
    """Write ``document`` as PNG, JPEG or (multi-page) PDF into ``folder``; return its path."""
    if document.is_pdf:
        path = folder / f"{document.name}.pdf"
        first, *rest = document.pages
        # Fixed dates keep the bytes, and so the content hash, the same for the same seed.
        first.save(path, "PDF", save_all=True, append_images=rest, resolution=document.dpi,
                   creationDate=_PDF_DATE, modDate=_PDF_DATE)
    elif document.is_jpeg:
        path = folder / f"{document.name}.jpg"
        document.pages[0].save(path, "JPEG", quality=document.jpeg_quality, optimize=False)
    else:
        path = folder / f"{document.name}.png"
        document.pages[0].save(path, "PNG")
    return path


def _render_and_write(options: SynthOptions, staging: str) -> list[IncomingDocument]:
    return [IncomingDocument(write_document(d, Path(staging)), tuple(d.texts), d.category, d.business, d.split)
            for d in generate_documents(options)]


def _render_and_inspect(render, data: DataConfig, options, staging: str) -> list[IncomingDocument]:
    """``render(options, staging)``, each document carrying what ``inspect_file`` found (when it found nothing wrong:
    a bad file is left for ``add_documents`` to report)."""
    documents = render(options, staging)
    for index, document in enumerate(documents):
        info, reason = inspect_file(document.path, data)
        if reason is None:
            documents[index] = replace(document, inspected=info)
    return documents


def render_in_processes(render, options, staging: str, workers: int, data: DataConfig,
                        progress=None) -> list[IncomingDocument]:
    """``render(options, staging)`` shared among ``workers`` processes: each renders its share of ``options.n``
    from seed ``options.seed * 1000 + worker`` and inspects it under ``data``'s limits (so that adding them decodes
    none again: for 180,000 lessons that was the slowest serial part); the documents come back in worker order.
    ``progress`` is called with the number rendered so far."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    shares = [options.n // workers + (1 if w < options.n % workers else 0) for w in range(workers)]
    jobs = [replace(options, n=share, seed=options.seed * 1000 + w) for w, share in enumerate(shares) if share]
    incoming: list[IncomingDocument] = []
    # Not fork: the caller may have threads (bench pretrain renders while it trains), and a forked child would
    # inherit whatever locks they hold.
    with ProcessPoolExecutor(len(jobs), mp_context=multiprocessing.get_context("forkserver")) as pool:
        for part in pool.map(functools.partial(_render_and_inspect, render, data), jobs, [staging] * len(jobs)):
            incoming += part
            if progress:
                progress(len(incoming))
    return incoming


def synthesize_dataset(root: Path, options: SynthOptions, data: DataConfig | None = None, progress=None,
                       workers: int = 1) -> AddResult:
    """Generate documents and add them to the dataset at ``root`` (atomically, duplicates refused).

    ``progress``, if given, is called with the number of documents rendered so far. With ``workers`` > 1,
    that many processes each render their share from seed ``options.seed * 1000 + worker``: the same seed
    and workers give the same documents (not the same as with one worker).
    """
    data = data or DataConfig()
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".synth-", dir=root) as staging:
        if workers > 1:
            incoming = render_in_processes(_render_and_write, options, staging, workers, data, progress)
            # Each process planned splits for its own share; the whole set gets the one plan of ``options.n``
            # (so ``split_fractions`` (1, 0, 0) still means exactly n - 2 training documents).
            plan = _split_plan(options.n, options.split_fractions, random.Random(options.seed))
            return add_documents(root, [replace(document, split=split) for document, split in zip(incoming, plan)], data,
                                 move=True)
        incoming = []
        for count, document in enumerate(generate_documents(options), start=1):
            path = write_document(document, Path(staging))
            incoming.append(IncomingDocument(path, tuple(document.texts), document.category, document.business, document.split))
            if progress:
                progress(count)
        return add_documents(root, incoming, data, move=True)


LINE_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


@dataclass
class LineOptions:
    """Single-line images: ``characters`` random capitals and digits each, in DejaVu Sans, black on white.

    The smallest reading task there is (the first stage of learning to read from scratch, and the
    workload that shows whether training a small model keeps the GPU busy)."""

    n: int = 1000
    seed: int = 0
    characters: int = 8
    width: int = 448
    height: int = 112
    font_size: int = 44
    split_fractions: tuple[float, float, float] = (1.0, 0.0, 0.0)

    def __post_init__(self) -> None:
        if self.n < 1 or self.characters < 1:
            raise ValueError("n and characters must be at least 1")
        if not 8 <= self.font_size <= self.height:
            raise ValueError(f"font_size must be between 8 and the image height ({self.height})")


def render_line(text: str, options: LineOptions, font: ImageFont.FreeTypeFont) -> Image.Image:
    """``text`` centred on a white ``width`` x ``height`` grayscale image."""
    image = Image.new("L", (options.width, options.height), 255)
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    draw.text(((options.width - (right - left)) / 2 - left, (options.height - (bottom - top)) / 2 - top), text, fill=0, font=font)
    return image


def synthesize_lines(root: Path, options: LineOptions, data: DataConfig | None = None, progress=None) -> AddResult:
    """Render ``options.n`` single-line PNGs (deterministic for the seed) and add them to the dataset at ``root``."""
    rng = random.Random(options.seed)
    font = ImageFont.truetype(str(_font_families()["sans"].regular), options.font_size)
    counts = [round(options.n * fraction) for fraction in options.split_fractions[1:]]
    splits = ["val"] * counts[0] + ["test"] * counts[1]
    splits = ["train"] * (options.n - len(splits)) + splits  # exactly as asked: no split is forced to exist
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".synth-", dir=root) as staging:
        incoming = []
        for index in range(options.n):
            text = "".join(rng.choice(LINE_ALPHABET) for _ in range(options.characters))
            path = Path(staging) / f"line_s{options.seed}_{index:06d}.png"
            render_line(text, options, font).save(path, "PNG")
            incoming.append(IncomingDocument(path, (text,), "line", "synthetic", splits[index]))
            if progress:
                progress(index + 1)
        return add_documents(root, incoming, data, move=True)


@dataclass
class PlantedPiiDocument:
    """A document text with personal data planted in it, and look-alikes that are not personal data."""

    text: str
    planted: list[tuple[str, str]]  # (kind, exact value as written in the text)
    look_alikes: list[str]


_AREA_CODES = (212, 312, 415, 617, 206, 303, 512, 646, 713, 404)


def _luhn_number(rng: random.Random, prefix: str, length: int) -> str:
    from stdnum import luhn

    body = prefix + "".join(str(rng.randrange(10)) for _ in range(length - len(prefix) - 1))
    return body + luhn.calc_check_digit(body)


def _planted_value(kind: str, rng: random.Random) -> str:
    from stdnum import iban

    if kind == "ssn":
        area = rng.choice([n for n in range(1, 900) if n != 666])
        return f"{area:03d}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}"
    if kind == "credit_card":
        prefix, length = rng.choice([("4", 16), ("51", 16), ("55", 16), ("37", 15), ("6011", 16), ("2221", 16)])
        digits = _luhn_number(rng, prefix, length)
        separator = rng.choice([" ", "-", ""])
        groups = [digits[:4], digits[4:10], digits[10:]] if length == 15 else [digits[i:i + 4] for i in range(0, 16, 4)]
        return separator.join(groups)
    if kind == "iban":
        country, bban = rng.choice([("DE", "".join(str(rng.randrange(10)) for _ in range(18))),
                                    ("GB", "NWBK" + "".join(str(rng.randrange(10)) for _ in range(14))),
                                    ("FR", "".join(str(rng.randrange(10)) for _ in range(23)))])
        compact = country + iban.calc_check_digits(country + "00" + bban) + bban
        return " ".join(compact[i:i + 4] for i in range(0, len(compact), 4)) if rng.random() < 0.5 else compact
    if kind == "email":
        first, last = rng.choice(_PEOPLE).lower().split()
        return f"{first}.{last}{rng.randint(1, 99)}@{rng.choice(['example.com', 'mail.acme.io', 'clientabc.org'])}"
    if kind == "phone":
        area, exchange, line = rng.choice(_AREA_CODES), rng.randint(201, 999), rng.randint(0, 9999)
        if exchange == 555:
            exchange = 556
        return rng.choice([f"({area}) {exchange}-{line:04d}", f"{area}-{exchange}-{line:04d}", f"+1 {area} {exchange} {line:04d}",
                           f"{area}.{exchange}.{line:04d}", f"+44 20 7946 {rng.randint(0, 9999):04d}"])
    if kind == "secret":
        alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789"
        token = "".join(rng.choice(alphabet) for _ in range(32))
        return rng.choice([token[:12] + "!", "sk-" + token, "AKIA" + token[:16].upper(), "ghp_" + token + "abcd"])
    raise ValueError(kind)


_SECRET_LABELS = ("Password: ", "API key: ", "password=", "Access token: ")
_PII_LABELS = {"ssn": "SSN: ", "credit_card": "Card: ", "iban": "IBAN: ", "email": "Email: ", "phone": "Phone: "}


def _look_alike(rng: random.Random) -> str:
    year = rng.choice([2024, 2025])
    return rng.choice([
        f"Order ORD-{year}-{rng.randint(100000, 999999)}",
        f"Invoice ID: INV-{year}-{rng.randint(1, 99999):05d}",
        f"Date: {_date(rng).isoformat()}",
        f"Date: {rng.randint(1, 12):02d}/{rng.randint(1, 28):02d}/{year}",
        f"Tracking: 1Z{rng.randint(100, 999)}AA1{rng.randint(10**9, 10**10 - 1)}",
        f"Account no. {rng.randint(10**9, 10**10 - 1)}",
        f"EIN: {rng.randint(10, 99)}-{rng.randint(1000000, 9999999)}",
        f"SKU {rng.randint(1000, 9999)}-{rng.randint(100, 999)}-{rng.randint(1000, 9999)}",
        f"Reference {rng.randint(10**8, 10**9 - 1)}",
        f"Total: {_money(rng.uniform(10, 99999))}",
        f"Order number: {rng.choice('1789')}{rng.randint(10**14, 10**15 - 1)}",  # 16 digits, no card issuer starts so
        f"Password reset instructions were sent on {_date(rng).isoformat()}.",
    ])


def planted_pii_documents(n: int, seed: int = 0) -> list[PlantedPiiDocument]:
    """``n`` synthetic document texts, each with 1-4 pieces of personal data and 2-5 look-alikes planted."""
    from ocrloop.pii import PII_KINDS

    rng = random.Random(seed)
    documents = []
    for text in sample_texts(n, seed):
        lines = text.split("\n")
        planted, look_alikes = [], []
        for kind in rng.sample(PII_KINDS, k=rng.randint(1, 4)):
            value = _planted_value(kind, rng)
            label = rng.choice(_SECRET_LABELS) if kind == "secret" else _PII_LABELS[kind]
            lines.insert(rng.randint(1, len(lines)), f"**{label.strip()}** {value}" if rng.random() < 0.3 and label.endswith(": ") else label + value)
            planted.append((kind, value))
        for _ in range(rng.randint(2, 5)):
            look_alike = _look_alike(rng)
            lines.insert(rng.randint(1, len(lines)), look_alike)
            look_alikes.append(look_alike)
        documents.append(PlantedPiiDocument("\n".join(lines), planted, look_alikes))
    return documents
