"""Font families for synthetic pages: matplotlib's bundled fonts, plus free fonts found on the machine.

matplotlib ships DejaVu Sans, Serif and Mono and STIX General, so every machine with ocrloop has four
families without downloading anything. Debian's ``fonts-liberation2`` and ``fonts-freefont-ttf`` (installed
by ``make system-packages``) add Liberation Sans/Serif/Mono and FreeSans/Serif/Mono; a machine without them
(a GPU box) can be given them through ``OCRLOOP_FONT_DIRS`` (folders separated by ``:``).
The same machine always lists the same families in the same order, so a seed gives the same pages.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from PIL import ImageFont

SYSTEM_FONT_DIRS = ("/usr/share/fonts/truetype/liberation2", "/usr/share/fonts/truetype/liberation",
                    "/usr/share/fonts/truetype/freefont")
# family name: (regular file, bold file); names are looked up in every font folder
_FAMILIES = {
    "dejavu-sans": ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf"),
    "dejavu-serif": ("DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf"),
    "dejavu-mono": ("DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf"),
    "stix": ("STIXGeneral.ttf", "STIXGeneralBol.ttf"),
    "liberation-sans": ("LiberationSans-Regular.ttf", "LiberationSans-Bold.ttf"),
    "liberation-serif": ("LiberationSerif-Regular.ttf", "LiberationSerif-Bold.ttf"),
    "liberation-mono": ("LiberationMono-Regular.ttf", "LiberationMono-Bold.ttf"),
    "free-sans": ("FreeSans.ttf", "FreeSansBold.ttf"),
    "free-serif": ("FreeSerif.ttf", "FreeSerifBold.ttf"),
    "free-mono": ("FreeMono.ttf", "FreeMonoBold.ttf"),
}
MONOSPACED = frozenset({"dejavu-mono", "liberation-mono", "free-mono"})


@dataclass
class FontFamily:
    """A regular and a bold face of one family, loaded once per size."""

    name: str
    regular: Path
    bold: Path
    _cache: dict = field(default_factory=dict)

    def get(self, bold: bool, size: int) -> ImageFont.FreeTypeFont:
        key = (bold, size)
        if key not in self._cache:
            self._cache[key] = ImageFont.truetype(str(self.bold if bold else self.regular), size)
        return self._cache[key]


def font_dirs() -> list[Path]:
    """Where fonts are looked for: matplotlib's, ``OCRLOOP_FONT_DIRS``, then the system's."""
    import matplotlib

    extra = [d for d in os.environ.get("OCRLOOP_FONT_DIRS", "").split(":") if d]
    return [Path(matplotlib.get_data_path()) / "fonts" / "ttf", *map(Path, extra), *map(Path, SYSTEM_FONT_DIRS)]


@lru_cache(maxsize=1)
def _available() -> tuple[tuple[str, Path, Path], ...]:
    found = []
    folders = [d for d in font_dirs() if d.is_dir()]
    for name, (regular, bold) in _FAMILIES.items():
        paths = [next((d / f for d in folders if (d / f).is_file()), None) for f in (regular, bold)]
        if all(paths):
            found.append((name, paths[0], paths[1]))
    return tuple(found)


def font_families() -> dict[str, FontFamily]:
    """Every family found on this machine, in a fixed order (DejaVu and STIX are always there)."""
    return {name: FontFamily(name, regular, bold) for name, regular, bold in _available()}
