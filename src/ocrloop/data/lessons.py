"""Reading lessons: what a reader trained from scratch learns from, in order (``ocrloop bench pretrain``).

1. ``glyphs``: four to eight random capitals and digits, large (40-48 px), centred, in DejaVu Sans, on a
   448x112 image. Nothing but the image predicts them, and they are the easiest to see: the stage in which
   the model first learns to look (from scratch, the loss sits at the text-only entropy until it does).
2. ``lines``: one line on a 448x112 image, any family and weight, 13-36 px (``line_sizes``), anywhere along the
   line: random letters and digits, amounts, dates, words and whole lines of the documents.
3. ``blocks``: two to six consecutive lines of a receipt or invoice with their markdown (titles, bold labels,
   list items, table rows).
4. ``pages``: whole receipts and invoices, cut below their last line.

With ``scrambled`` above 0, that share of blocks and pages keeps its document's layout and markup but has every
word and number replaced by random letters and digits of the same shape: a model that writes the document it
expects, without looking, gets those wrong, so looking keeps paying after the glyphs. With ``random_layouts`` above
0, that share keeps its document's words but is laid out anew (``relayout``): a model that recalls a layout instead
of reading one gets those wrong. With ``mixed_names`` above 0, that share names its seller and items at random from
every business's (``swap_names``): a model that reads the seller and writes that business's items and prices gets
those wrong. With ``random_labels`` above 0, that share labels its fields and columns with other words of the
documents (``relabel``): a model that writes the labels its layouts taught, instead of reading them, gets those
wrong.

Blocks and pages draw their families from every family on the machine (``data.fonts``) and get light scan
noise (with ``photos`` above 0, that share of pages is a phone photo instead: ``data.synth.photograph``); their
canvases are padded with white to multiples of 112 px, the vision tower's attention window, so
every window has the same length and a batch's window attention is one call. The texts come from
``data.synth``'s document generators, so the vocabulary is the documents'; blocks and pages are drawn in the
first layout of each category, or in ``templates``; held-out pages use seeds never trained on.
"""

from __future__ import annotations

import datetime as dt
import io
import random
import re
import string
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ocrloop.config import DataConfig
from ocrloop.data.add import AddResult, IncomingDocument, add_documents
from ocrloop.data.fonts import MONOSPACED, FontFamily, font_families
from ocrloop.data.synth import (CATEGORY_BUSINESSES, COMPANY_NAMES, DOCUMENT_TEMPLATES, ITEM_NAMES, VOCABULARY,
                                PageRenderer, SynthOptions, add_scan_noise, names_pattern, photograph, pick_template,
                                render_document, render_in_processes)

LESSONS = ("glyphs", "lines", "blocks", "pages")
LINE_SIZE = (448, 112)
WINDOW = 112  # pixels per side of Qwen2.5-VL's vision attention window (window_size in its config)
GLYPHS = string.ascii_uppercase + string.digits
_MARKUP = re.compile(r"\*\*|^#+ |^- ")


@dataclass(frozen=True)
class LessonOptions:
    """``n`` lessons of ``kind``, deterministic for ``seed`` (and the fonts on the machine)."""

    kind: str
    n: int
    seed: int = 0
    categories: tuple[str, ...] = ("receipt", "invoice")
    noise: float = 0.15  # light scan noise (0: clean pages, as the held-out test pages are)
    scale: tuple[float, float] = (0.8, 1.0)  # page scale range (1.0: receipts about 430 px wide, 15-18 px text)
    scrambled: float = 0.0  # share of blocks and pages whose words and numbers are random (see ``scramble``)
    photos: float = 0.0  # share of pages drawn as phone photos (``data.synth.photograph``), in colour, JPEG-degraded
    templates: tuple[int, ...] = (0,)  # layouts of blocks and pages, by index into ``data.synth.DOCUMENT_TEMPLATES``
    random_layouts: float = 0.0  # share of blocks and pages whose document is laid out anew (see ``relayout``)
    mixed_names: float = 0.0  # share of blocks and pages whose seller and items are named at random (``swap_names``)
    random_labels: float = 0.0  # share of blocks and pages whose field labels and column names are random (``relabel``)
    line_sizes: tuple[int, int] = (13, 36)  # text heights of line lessons, px (before shrinking to fit the line)

    def __post_init__(self) -> None:
        if self.kind not in LESSONS:
            raise ValueError(f"unknown lesson {self.kind!r}; choose from {', '.join(LESSONS)}")
        if self.n < 1:
            raise ValueError("n must be at least 1")
        if not 0 <= self.scrambled <= 1:
            raise ValueError("scrambled must be between 0 and 1")
        if not 0 <= self.photos <= 1:
            raise ValueError("photos must be between 0 and 1")
        if not 0 <= self.random_layouts <= 1:
            raise ValueError("random_layouts must be between 0 and 1")
        if not 0 <= self.mixed_names <= 1:
            raise ValueError("mixed_names must be between 0 and 1")
        if not 0 <= self.random_labels <= 1:
            raise ValueError("random_labels must be between 0 and 1")
        if not 8 <= self.line_sizes[0] <= self.line_sizes[1] <= 64:
            raise ValueError(f"line_sizes {list(self.line_sizes)}: need 8 <= smallest <= largest <= 64 px")
        if not self.templates or any(t not in range(len(DOCUMENT_TEMPLATES[c])) for t in self.templates for c in self.categories):
            raise ValueError(f"templates {list(self.templates)}: not a layout of every category of {list(self.categories)}")
        unknown = [c for c in self.categories if c not in CATEGORY_BUSINESSES]
        if unknown:
            raise ValueError(f"unknown categories {unknown}")


_WORD = re.compile(r"[A-Za-z0-9]+")


def scramble(lines: list[str], rng: random.Random) -> list[str]:
    """``lines`` with every run of letters and digits replaced by random ones of the same length and kind (capitals,
    small letters, digits each stay what they were); markup, punctuation and spacing are kept."""

    def random_like(match: re.Match) -> str:
        return "".join(rng.choice(string.digits) if c.isdigit() else
                       rng.choice(string.ascii_uppercase) if c.isupper() else rng.choice(string.ascii_lowercase)
                       for c in match.group())

    return [_WORD.sub(random_like, line) for line in lines]


_NAMES = names_pattern(COMPANY_NAMES + ITEM_NAMES)


def swap_names(lines: list[str], rng: random.Random) -> list[str]:
    """``lines`` with every seller's and item's name replaced by another drawn from every business's (one for one:
    a name is replaced alike wherever it comes, and two names never become one); quantities, prices and totals are
    kept. On such a page the seller no longer tells which items follow, nor an item its price: they must be read."""
    swapped: dict[str, str] = {}

    def other(match: re.Match) -> str:
        name = match.group()
        if name not in swapped:
            names = COMPANY_NAMES if name in COMPANY_NAMES else ITEM_NAMES
            swapped[name] = rng.choice([n for n in names if n not in swapped.values()])
        return swapped[name]

    return [_NAMES.sub(other, line) for line in lines]


_BOLD_LABEL = re.compile(r"^(\*\*)([A-Za-z]+(?: [A-Za-z]+)*)")
_TABLE_RULE = re.compile(r"^\|(?:-+\|)+$")


def relabel(lines: list[str], rng: random.Random) -> list[str]:
    """``lines`` with the words of every bold field label ("**Date:**", the "Tax" of "**Tax (8%):**") and every table
    header cell replaced by one or two words drawn from ``data.synth.VOCABULARY``; values, markup and the layout are
    kept. A model that writes the labels its layouts taught, without reading them, gets those wrong: held-out
    layouts label their fields with words no lesson uses."""

    def label() -> str:
        return " ".join(rng.choice(VOCABULARY) for _ in range(rng.randint(1, 2)))

    out = []
    for position, line in enumerate(lines):
        header = position + 1 < len(lines) and _TABLE_RULE.match(lines[position + 1]) and line.startswith("|")
        if header:
            out.append("| " + " | ".join(label() for _ in line.strip("|").split("|")) + " |")
        else:
            out.append(_BOLD_LABEL.sub(lambda match: match.group(1) + label(), line))
    return out


# How a document's parts are written when it is laid out anew; one choice of each per document.
_HEADING_STYLES = ("# {}", "## {}", "**{}**", "{}")
_FIELD_STYLES = ("**{}:** {}", "**{}** {}", "{}: {}", "{} {}", "- {}: {}", "**{}:** **{}**")
_CELL_SEPARATORS = (" ", "  ", ", ", " / ", " - ", ": ")
_DATE_FORMATS = ("%Y-%m-%d", "%d/%m/%Y", "%m/%d/%Y", "%B %d, %Y", "%d %b %Y", "%d.%m.%Y")
_INVOICE_COLUMNS = ["Description", "Qty", "Unit price", "Amount"]
_ISO_DATE = re.compile(r"\b(\d{4})-(\d{2})-(\d{2})\b")
# Where a list item's cells part: "Mouse x2: $45.00", "Mouse: 3 at $5.00 = $15.00", "3 x Mouse @ $5.00".
_ITEM_CELLS = re.compile(r"\s+x(?=\d)|:\s+|\s+@\s+|\s+=\s+|\s+at\s+|(?<=\d)\s+x\s+")


def relayout(lines: list[str], rng: random.Random) -> list[str]:
    """The words of a document's markdown ``lines`` in a layout drawn for it: the order of its labelled fields, how
    headings, fields and item rows are written (a table of the same or fewer columns, or a list), where the title
    and the notes go, and the date format. Nothing is added but separators, markup and, over a table made of list
    items, the first layout's invoice column names."""
    headings, fields, totals, notes, header, rows = [], [], [], [], None, []
    for line in lines:
        if line.startswith("|---"):
            continue
        if line.startswith("#"):
            headings.append(line.lstrip("#").strip())
        elif line.startswith("|"):
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            if header is None and not rows:
                header = cells
            else:
                rows.append(cells)
        elif line.startswith("- "):
            rows.append(_ITEM_CELLS.split(line[2:]))
        else:
            parts = [part.strip(" :") for part in line.split("**") if part.strip(" :")]
            if len(parts) == 2:
                (totals if rows else fields).append(parts)
            else:
                notes.append(" ".join(parts))
    heading, field = rng.choice(_HEADING_STYLES), rng.choice(_FIELD_STYLES)
    rng.shuffle(fields)
    rng.shuffle(totals)
    out = [field.format(*pair) for pair in fields]
    title_at = rng.randint(0, min(2, len(out)))
    out[title_at:title_at] = [heading.format(h.upper() if rng.random() < 0.3 else h) for h in headings]
    if rows:
        columns = min(len(row) for row in rows)
        kept = sorted(rng.sample(range(columns), k=rng.randint(min(2, columns), columns)))
        if rng.random() < 0.5:
            # Column names of the first layout's invoice, never those of a layout held out
            names = header if header is not None and len(header) == columns else \
                {2: ["Description", "Amount"], 3: ["Description", "Qty", "Amount"]}.get(columns, _INVOICE_COLUMNS)
            out += ["| " + " | ".join(names[i] if i < len(names) else "" for i in kept) + " |",
                    "|" + "---|" * len(kept)]
            out += ["| " + " | ".join(row[i] for i in kept) + " |" for row in rows]
        else:
            separator, bullet = rng.choice(_CELL_SEPARATORS), rng.choice(("- ", ""))
            out += [bullet + separator.join(row[i] for i in kept) for row in rows]
    out += [field.format(*pair) for pair in totals]
    out[0 if notes and rng.random() < 0.3 else len(out):0] = notes
    date_format = rng.choice(_DATE_FORMATS)
    return [_ISO_DATE.sub(lambda m: dt.date(*map(int, m.groups())).strftime(date_format), line) for line in out]


def _document_lines(rng: random.Random, categories: tuple[str, ...],
                    templates: tuple[int, ...] = (0,)) -> tuple[str, list[str]]:
    category = rng.choice(categories)
    business = rng.choice(CATEGORY_BUSINESSES[category])
    return category, DOCUMENT_TEMPLATES[category][pick_template(templates, rng)](rng, business)


def _line_text(rng: random.Random, categories: tuple[str, ...]) -> str:
    draw = rng.random()
    if draw < 0.35:  # nothing but the image predicts these
        alphabet = string.ascii_letters + string.digits + "#$%.,:-/()"
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(3, 16)))
    if draw < 0.5:
        return rng.choice([f"${rng.uniform(0, 9999):,.2f}", f"{rng.randint(2020, 2030)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
                           f"#{rng.randint(1000, 99999)}", f"x{rng.randint(1, 12)}", f"{rng.randint(0, 25)}%"])
    lines = [line for line in _document_lines(rng, categories)[1] if not line.startswith("|---")]
    line = _MARKUP.sub("", rng.choice(lines)).replace("|", " ").strip()
    if draw < 0.75 and len(line.split()) > 2:  # a run of its words, so lines are not only whole template lines
        words = line.split()
        start = rng.randrange(len(words) - 1)
        line = " ".join(words[start:start + rng.randint(1, 4)])
    return line


def _families_of_kind(families: dict[str, FontFamily], rng: random.Random) -> dict[str, FontFamily]:
    """A sans, a serif and a monospaced family for one document, drawn from every family on the machine."""
    mono = [f for name, f in families.items() if name in MONOSPACED]
    serif = [f for name, f in families.items() if "serif" in name or name == "stix"]
    sans = [f for name, f in families.items() if f not in mono and f not in serif]
    return {"sans": rng.choice(sans), "serif": rng.choice(serif), "mono": rng.choice(mono)}


def render_line_lesson(rng: random.Random, families: dict[str, FontFamily], categories: tuple[str, ...], *,
                       sizes: tuple[int, int], glyphs: bool = False) -> tuple[Image.Image, str]:
    """One line of text on a white 448x112 image: ``glyphs``, 4-8 random capitals and digits, large and centred
    in DejaVu Sans; otherwise any text, family, weight and size in ``sizes`` (shrunk to fit), anywhere along the
    line."""
    if glyphs:
        text = "".join(rng.choice(GLYPHS) for _ in range(rng.randint(4, 8)))
        family, bold, size = families["dejavu-sans"], False, rng.randint(40, 48)
    else:
        text = _line_text(rng, categories)
        family, bold, size = rng.choice(list(families.values())), rng.random() < 0.3, rng.randint(*sizes)
    width, height = LINE_SIZE
    image = Image.new("L", LINE_SIZE, 255)
    draw = ImageDraw.Draw(image)
    while True:
        font = family.get(bold, size)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        if right - left <= width - 8 or size <= 8:
            break
        size -= 2
    x = ((width - (right - left)) / 2 if glyphs else rng.uniform(4, max(4, width - 4 - (right - left)))) - left
    y = (height - (bottom - top)) / 2 - top + (0 if glyphs else rng.uniform(-8, 8))
    draw.text((x, y), text, fill=0 if glyphs else rng.randint(0, 60), font=font)
    return image, text


def _pad_to_windows(image: Image.Image) -> Image.Image:
    """``image`` on a white canvas whose sides are the next multiples of the attention window."""
    width, height = (-(-side // WINDOW) * WINDOW for side in image.size)
    if (width, height) == image.size:
        return image
    canvas = Image.new(image.mode, (width, height), "white")
    canvas.paste(image, (0, 0))
    return canvas


def render_block_lesson(rng: random.Random, families: dict[str, FontFamily], categories: tuple[str, ...],
                        scale: tuple[float, float], scrambled: bool = False,
                        templates: tuple[int, ...] = (0,), relaid: bool = False,
                        mixed: bool = False, relabeled: bool = False) -> tuple[Image.Image, str, str]:
    """Two to six consecutive markdown lines of a receipt or invoice, drawn as on the page, cut to their content;
    with the document's category. ``scrambled``: their words and numbers random (``scramble``); ``relaid``: the
    document laid out anew first (``relayout``); ``mixed``: its seller and items named at random first
    (``swap_names``); ``relabeled``: its labels random first (``relabel``)."""
    category, lines = _document_lines(rng, categories, templates)
    if mixed:
        lines = swap_names(lines, rng)
    if relabeled:
        lines = relabel(lines, rng)
    if relaid:
        lines = relayout(lines, rng)
    count = rng.randint(2, 6)
    start = rng.randrange(max(1, len(lines) - count + 1))
    chosen = lines[start:start + count]
    if chosen[0].startswith("|---"):
        chosen = chosen[1:] or lines[:1]
    if scrambled:
        chosen = scramble(chosen, rng)
    renderer = PageRenderer(rng, rng.choice(list(_families_of_kind(families, rng).values())), LINE_SIZE[0], None,
                         rng.uniform(*scale), paginate=False)
    pages, texts = renderer.render(chosen)
    return pages[0], texts[0], category


def render_lesson(kind: str, rng: random.Random, families: dict[str, FontFamily],
                  options: LessonOptions) -> tuple[Image.Image, str, str]:
    """One lesson of ``kind``: the image, its exact text, and its category (the document's for blocks and pages,
    else the kind). Grayscale, except photographed pages: a third of the bytes to write, decode and copy, and the
    models see the same pixels (they convert to RGB). Glyphs and lines stay clean."""
    noise_seed = rng.randrange(2**32)
    if kind in ("glyphs", "lines"):
        return (*render_line_lesson(rng, families, options.categories, sizes=options.line_sizes,
                                    glyphs=kind == "glyphs"), kind)
    # Drawn only when asked for, so that lessons without scrambling, new layouts or mixed names stay those of earlier
    # versions, seed for seed.
    scrambled = options.scrambled > 0 and rng.random() < options.scrambled
    relaid = options.random_layouts > 0 and rng.random() < options.random_layouts
    mixed = options.mixed_names > 0 and rng.random() < options.mixed_names
    relabeled = options.random_labels > 0 and rng.random() < options.random_labels
    if kind == "blocks":
        image, text, category = render_block_lesson(rng, families, options.categories, options.scale, scrambled,
                                                    options.templates, relaid, mixed, relabeled)
    else:
        category = rng.choice(options.categories)
        page_options = SynthOptions(n=1, categories=(category,), scale=rng.uniform(*options.scale), fit_to_content=True,
                                    noise=0.0, templates=options.templates)

        def rewrite(lines: list[str]) -> list[str]:
            lines = swap_names(lines, rng) if mixed else lines
            lines = relabel(lines, rng) if relabeled else lines
            lines = relayout(lines, rng) if relaid else lines
            return scramble(lines, rng) if scrambled else lines

        document = render_document(category, rng.choice(CATEGORY_BUSINESSES[category]), rng, page_options,
                                   _families_of_kind(families, rng), rewrite=rewrite)
        image, text = document.pages[0], document.texts[0]
        # Drawn only when asked for, as ``scrambled`` is; the page is photographed in place of scan noise.
        if options.photos > 0 and rng.random() < options.photos:
            return _pad_to_windows(_photographed(image, noise_seed)), text, category
    noisy = add_scan_noise(image.convert("L"), random.Random(noise_seed), np.random.default_rng(noise_seed), options.noise)
    return _pad_to_windows(noisy), text, category


def _photographed(page: Image.Image, seed: int) -> Image.Image:
    """``page`` as a phone photo (``photograph``) after the JPEG compression it is saved with, in colour: what the
    photo loop's documents look like."""
    photo, quality = photograph(page, random.Random(seed), np.random.default_rng(seed))
    encoded = io.BytesIO()
    photo.save(encoded, "JPEG", quality=quality)
    encoded.seek(0)
    return Image.open(encoded).convert("RGB")


def _render_and_write(options: LessonOptions, staging: str) -> list[IncomingDocument]:
    rng = random.Random(options.seed)
    families = font_families()
    incoming = []
    for index in range(options.n):
        image, text, category = render_lesson(options.kind, rng, families, options)
        path = Path(staging) / f"{options.kind}_s{options.seed}_{index:06d}.png"
        image.save(path, "PNG", compress_level=1)
        incoming.append(IncomingDocument(path, (text,), category, "synthetic", "train"))
    return incoming


def synthesize_lessons(root: Path, options: LessonOptions, data: DataConfig | None = None, workers: int = 1) -> AddResult:
    """Render ``options.n`` lessons into the dataset at ``root``, all in the train split.

    With ``workers`` > 1, that many processes each render their share from seed ``options.seed * 1000 + worker``."""
    data = data or DataConfig()
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".lessons-", dir=root) as staging:
        if min(options.n, workers) == 1:  # one share: rendered here, from the seed itself
            incoming = _render_and_write(options, staging)
        else:
            incoming = render_in_processes(_render_and_write, options, staging, workers, data)
        return add_documents(root, incoming, data, move=True)


def blank_copy(root: Path, dataset_root: Path, data: DataConfig | None = None) -> AddResult:
    """The blind control: every page of the dataset at ``dataset_root`` as a white image of the same size, with the
    same text, category and split, written as a dataset at ``root``. A model that reads these as well as the real
    pages is guessing from the texts it was trained on, not reading."""
    from ocrloop.data.dataset import Dataset

    source = Dataset.open(dataset_root, data)
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".blank-", dir=root) as staging:
        incoming = []
        for index, example in enumerate(source.examples()):
            width, height = source.files[example.source].page_sizes[example.page]
            path = Path(staging) / f"blank_{index:06d}.png"
            # One grey pixel that differs per page: identical files would be refused as duplicates.
            image = Image.new("RGB", (width, height), "white")
            image.putpixel((index % width, (index // width) % height), (254, 254, 254))
            image.save(path, "PNG")
            incoming.append(IncomingDocument(path, (example.text,), example.category, example.business, example.split))
        return add_documents(root, incoming, data, move=True)
