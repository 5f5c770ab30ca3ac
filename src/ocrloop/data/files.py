"""Reading document files safely: path containment, images, PDF pages, content hashes.

Every check here reports a plain message instead of raising, so validation can list all
problems in one pass; ``load_page`` raises ``DatasetError`` for the loaders.

PDFium is not thread-safe: every call into it holds ``PDFIUM_LOCK`` (the service and the threaded
page loader call it from several threads at once).
"""

from __future__ import annotations

import hashlib
import os
import threading
import warnings
from pathlib import Path

import pypdfium2
from PIL import Image, ImageOps, UnidentifiedImageError

from ocrloop.config import DataConfig
from ocrloop.data.records import FileInfo
from ocrloop.errors import DatasetError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp"})
PDF_SUFFIXES = frozenset({".pdf"})
SUPPORTED_SUFFIXES = IMAGE_SUFFIXES | PDF_SUFFIXES
_EXIF_ORIENTATION_TAG = 0x0112
_HASH_CHUNK = 1 << 20
PDFIUM_LOCK = threading.RLock()


def content_hash(path: Path) -> str:
    """SHA-256 of the file's bytes: a document's identity, whatever its name."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_inside(root: Path, relative: str) -> tuple[Path | None, str | None]:
    """Resolve ``relative`` under ``root``; refuse absolute paths, ``..`` and symlinks that leave it.

    Returns ``(path, None)`` or ``(None, reason)``.
    """
    if not relative or not relative.strip():
        return None, "empty path"
    if os.path.isabs(relative) or relative.startswith(("/", "\\")) or (len(relative) > 1 and relative[1] == ":"):
        return None, "absolute paths are not allowed; use a path relative to the dataset root"
    candidate = root / relative
    lexical = Path(os.path.normpath(candidate))
    if not lexical.is_relative_to(Path(os.path.normpath(root))):
        return None, "path escapes the dataset root through '..'"
    try:
        root_resolved, resolved = root.resolve(), candidate.resolve()
    except (RuntimeError, OSError):  # a symlink loop (RuntimeError before Python 3.13, OSError after)
        return None, "path is a symlink loop"
    if not resolved.is_relative_to(root_resolved):
        return None, "path is a symlink that points outside the dataset root"
    return resolved, None


def inspect_file(path: Path, data: DataConfig) -> tuple[FileInfo | None, str | None]:
    """Check that ``path`` is a readable, complete, supported document within the limits.

    Returns ``(FileInfo, None)`` or ``(None, reason)``. Images are fully decoded (a truncated
    file fails here, not in the middle of training); pixel limits are checked before decoding.
    """
    suffix = path.suffix.lower()
    try:
        if not path.exists():
            return None, "file not found"
        if not path.is_file():
            return None, "not a regular file"
    except OSError as error:  # a symlink loop, a name too long, ...
        return None, f"cannot open: {error.strerror or error}"
    if suffix not in SUPPORTED_SUFFIXES:
        return None, f"unsupported format {suffix or '(no extension)'}; use one of {', '.join(sorted(SUPPORTED_SUFFIXES))}"
    size = path.stat().st_size
    if size == 0:
        return None, "file is empty (0 bytes)"
    if size > data.max_file_bytes:
        return None, f"file is {size} bytes, over the limit of {data.max_file_bytes}"
    try:
        digest = content_hash(path)
    except OSError as error:
        return None, f"cannot read file: {error.strerror or error}"
    if suffix in PDF_SUFFIXES:
        return _inspect_pdf(path, digest, data)
    return _inspect_image(path, digest, data)


def _open_image_header(path: Path, data: DataConfig) -> Image.Image:
    # Pillow's own bomb guard uses a global limit; ours is per config and checked by the caller.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        previous = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            return Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = previous


def _inspect_image(path: Path, digest: str, data: DataConfig) -> tuple[FileInfo | None, str | None]:
    try:
        image = _open_image_header(path, data)
    except UnidentifiedImageError:
        return None, "unreadable: not a valid image file"
    except OSError as error:
        return None, f"unreadable: {error}"
    with image:
        width, height = image.size
        if reason := page_size_problem(width, height, data):
            return None, f"image {reason}"
        try:
            image.load()
        except (OSError, SyntaxError, ValueError) as error:
            return None, f"unreadable or truncated image: {error}"
        orientation = image.getexif().get(_EXIF_ORIENTATION_TAG)
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    return FileInfo(digest, "image", [(width, height)], orientation), None


def page_size_problem(width: int, height: int, data: DataConfig) -> str | None:
    """Why a page of ``width`` x ``height`` pixels is refused, or None: over ``data.max_image_pixels``, or a shape
    the models cannot take (Qwen2.5-VL's processor raises above 200:1; a 1-pixel side resizes to nothing)."""
    if width * height > data.max_image_pixels:
        return f"is {width}x{height} = {width * height} pixels, over the limit of {data.max_image_pixels} (data.max_image_pixels)"
    if min(width, height) < data.min_page_side:
        return f"is {width}x{height} pixels: a side is under data.min_page_side ({data.min_page_side} px)"
    ratio = max(width, height) / min(width, height)
    if ratio > data.max_aspect_ratio:
        return (f"is {width}x{height} pixels: aspect ratio {ratio:.0f}:1 is over data.max_aspect_ratio "
                f"({data.max_aspect_ratio:g}:1)")
    return None


def _pdf_page_pixels(page: pypdfium2.PdfPage, dpi: int) -> tuple[int, int]:
    width_pt, height_pt = page.get_size()
    return round(width_pt * dpi / 72), round(height_pt * dpi / 72)


def _inspect_pdf(path: Path, digest: str, data: DataConfig) -> tuple[FileInfo | None, str | None]:
    with PDFIUM_LOCK:
        try:
            document = pypdfium2.PdfDocument(path)
        except pypdfium2.PdfiumError as error:
            return None, f"unreadable PDF: {error}"
        try:
            if len(document) == 0:
                return None, "PDF has no pages"
            if len(document) > data.max_pdf_pages:
                return None, f"PDF has {len(document)} pages, over the limit of {data.max_pdf_pages} (data.max_pdf_pages)"
            sizes = []
            for index in range(len(document)):
                width, height = _pdf_page_pixels(document[index], data.pdf_dpi)
                if reason := page_size_problem(width, height, data):
                    return None, f"page {index + 1} {reason} at {data.pdf_dpi} dpi"
                sizes.append((width, height))
            return FileInfo(digest, "pdf", sizes), None
        except pypdfium2.PdfiumError as error:
            return None, f"unreadable PDF page: {error}"
        finally:
            document.close()


def load_page(path: Path, page: int, data: DataConfig) -> Image.Image:
    """Decode one page as an RGB image: EXIF rotation applied, PDF pages rasterized at ``data.pdf_dpi``."""
    suffix = path.suffix.lower()
    if suffix in PDF_SUFFIXES:
        return _render_pdf_page(path, page, data)
    try:
        image = _open_image_header(path, data)
        with image:
            if reason := page_size_problem(*image.size, data):
                raise DatasetError(f"{path}: image {reason}")
            image.load()
            # Phones store portrait scans as rotated landscape plus an EXIF tag; models must see them upright.
            upright = ImageOps.exif_transpose(image)
            return upright.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise DatasetError(f"{path}: unreadable image: {error}") from None


def _render_pdf_page(path: Path, page: int, data: DataConfig) -> Image.Image:
    with PDFIUM_LOCK:
        try:
            document = pypdfium2.PdfDocument(path)
        except pypdfium2.PdfiumError as error:
            raise DatasetError(f"{path}: unreadable PDF: {error}") from None
        try:
            if not 0 <= page < len(document):
                raise DatasetError(f"{path}: page {page + 1} does not exist ({len(document)} pages)")
            width, height = _pdf_page_pixels(document[page], data.pdf_dpi)
            if reason := page_size_problem(width, height, data):
                raise DatasetError(f"{path}: page {page + 1} {reason} at {data.pdf_dpi} dpi")
            bitmap = document[page].render(scale=data.pdf_dpi / 72)
            return bitmap.to_pil().convert("RGB")  # a copy: the bitmap's buffer is freed with the document
        except pypdfium2.PdfiumError as error:
            raise DatasetError(f"{path}: unreadable PDF page {page + 1}: {error}") from None
        finally:
            document.close()


_SIGNATURES = ((b"\x89PNG\r\n\x1a\n", ".png"), (b"\xff\xd8\xff", ".jpg"), (b"II*\x00", ".tiff"), (b"MM\x00*", ".tiff"),
               (b"BM", ".bmp"), (b"%PDF-", ".pdf"))


def detect_format(head: bytes) -> str | None:
    """The file suffix that the first bytes of a file say it is (``.png``, ``.pdf``, ...), or None."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return ".webp"
    for signature, suffix in _SIGNATURES:
        if head.startswith(signature):
            return suffix
    # PDF readers accept a header anywhere in the first kilobyte (after a BOM or junk), and so does PDFium.
    return ".pdf" if b"%PDF-" in head[:1024] else None
