"""PDF pages rasterized under concurrency: ocrloop's PDFium lock against one rasterizing process.

PDFium is not thread-safe, so pages are rasterized either under one lock (ocrloop.data.files.PDFIUM_LOCK)
or by one separate process. This times both on 8 synthetic 20-page letter PDFs at 144 dpi; the images
come back to the caller in every variant, as the service needs them.

    .venv/bin/python bench/pdf_rasterize.py
"""

from __future__ import annotations

import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

from PIL import Image

from ocrloop.config import DataConfig
from ocrloop.data.files import load_page

DATA = DataConfig(pdf_dpi=144)


def render(job: tuple[Path, int]) -> Image.Image:
    return load_page(job[0], job[1], DATA)


def main() -> None:
    folder = Path(tempfile.mkdtemp(prefix="ocrloop-pdf-bench-"))
    for index in range(8):
        pages = [Image.new("RGB", (612, 792), (255, 255 - 10 * page, 255)) for page in range(20)]
        pages[0].save(folder / f"{index}.pdf", save_all=True, append_images=pages[1:], resolution=72)
    jobs = [(folder / f"{index}.pdf", page) for index in range(8) for page in range(20)]
    for name, pool in (("PDFium lock, 8 threads", ThreadPoolExecutor(8)), ("PDFium lock, 1 thread", ThreadPoolExecutor(1)),
                       ("one rasterizing process", ProcessPoolExecutor(1))):
        with pool:
            list(pool.map(render, jobs[:4]))  # warm: imports, process start
            started = time.perf_counter()
            list(pool.map(render, jobs))
            seconds = time.perf_counter() - started
        print(f"{name}: {len(jobs)} pages in {seconds:.2f} s = {len(jobs) / seconds:.1f} pages/s")


if __name__ == "__main__":
    main()
