"""OpenSlide backend of :class:`SlideReader` (openslide-bin ships the C library)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import openslide
from PIL import Image

from wsi_mil.errors import SlideReadError
from wsi_mil.slides.base import READERS, SlideReader
from wsi_mil.slides.mpp import resolve_mpp

#: Exceptions OpenSlide / Pillow raise on missing, truncated or foreign files.
OPENSLIDE_ERRORS = (openslide.OpenSlideError, OSError, ValueError, Image.DecompressionBombError)


_TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def _untiled_tiff(path: Path) -> str:
    """'W x H px' when ``path`` is a readable TIFF whose first page is stored in strips."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            if page.is_tiled:
                return ""
            return f"{int(page.imagewidth)} x {int(page.imagelength)} px"
    except Exception:  # noqa: BLE001 - tifffile raises many types on damaged files
        return ""


def _why_unsupported(path: Path) -> str:
    """A human reason for a file OpenSlide refuses: truncated TIFF, empty, or not a slide."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(4)
    if size == 0:
        return "empty file (0 bytes)"
    if head in _TIFF_MAGICS:
        untiled = _untiled_tiff(path)
        if untiled:
            return (f"a valid strip (untiled) TIFF of {untiled}: OpenSlide reads tiled TIFFs "
                    "only; tile it with backend=pil (read whole into memory) or convert it "
                    "to a tiled pyramid (e.g. `vips tiffsave in.tif out.tif --tile --pyramid "
                    "--compression=jpeg`)")
        return (f"TIFF file of {size} bytes that OpenSlide cannot parse: truncated or corrupt "
                "(an interrupted copy?)")
    return f"not a slide file (unknown format, starts with {head!r})"


def _rgba_to_rgb(rgba: np.ndarray, background: tuple[int, int, int]) -> np.ndarray:
    """(H, W, 4) uint8 straight-alpha RGBA -> (H, W, 3) uint8 RGB over ``background``."""
    rgb, alpha = rgba[..., :3], rgba[..., 3:]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgb)
    bg = np.asarray(background, np.float32)
    a = alpha.astype(np.float32) / 255.0
    return (rgb * a + bg * (1.0 - a) + 0.5).astype(np.uint8)


@READERS.register("openslide")
class OpenSlideReader(SlideReader):
    """Reads any format OpenSlide supports (.svs, .tif, .ndpi, .mrxs, .scn, ...).

    ``osr`` is the underlying :class:`openslide.OpenSlide`; ``mpp_override`` (um/px)
    wins over the file's own resolution (see :mod:`wsi_mil.slides.mpp`).
    Raises :class:`SlideReadError` when the file is missing or not a readable slide.
    """

    backend = "openslide"

    def __init__(self, path: str | Path, mpp_override: float | None = None) -> None:
        self.path = Path(path)
        self.slide_id = self.path.stem
        if not self.path.exists():
            raise SlideReadError(f"slide file not found: {self.path}")
        try:
            self.osr = openslide.OpenSlide(str(self.path))
        except openslide.OpenSlideUnsupportedFormatError as err:
            raise SlideReadError(f"{self.path.name}: {_why_unsupported(self.path)} "
                                 f"(OpenSlide: {err or 'unsupported format'})") from err
        except OPENSLIDE_ERRORS as err:
            raise SlideReadError(f"{self.path.name}: cannot open slide: {err}") from err
        try:
            self.properties = dict(self.osr.properties)
            self.dimensions = tuple(int(v) for v in self.osr.dimensions)
            self.level_count = int(self.osr.level_count)
            self.level_dimensions = tuple(tuple(int(v) for v in d)
                                          for d in self.osr.level_dimensions)
            self.level_downsamples = tuple(float(d) for d in self.osr.level_downsamples)
            self.mpp, self.mpp_source = resolve_mpp(self.properties, mpp_override,
                                                    self.path.name)
        except BaseException:
            self.osr.close()
            raise
        colour = self.properties.get("openslide.background-color", "ffffff")
        try:
            self.background = tuple(int(colour[i:i + 2], 16) for i in (0, 2, 4))
        except ValueError:
            self.background = (255, 255, 255)

    @property
    def quickhash(self) -> str:
        return self.properties.get("openslide.quickhash-1", "")

    @property
    def vendor(self) -> str:
        return self.properties.get("openslide.vendor", "")

    def read_region(self, xy_level0: tuple[int, int], level: int,
                    size_px: tuple[int, int]) -> np.ndarray:
        try:
            img = self.osr.read_region((int(xy_level0[0]), int(xy_level0[1])), int(level),
                                       (int(size_px[0]), int(size_px[1])))
        except OPENSLIDE_ERRORS as err:
            raise SlideReadError(f"{self.path.name}: cannot read region {tuple(xy_level0)} "
                                 f"level {level} size {tuple(size_px)}: {err}") from err
        return _rgba_to_rgb(np.asarray(img), self.background)

    def get_thumbnail(self, max_size: tuple[int, int]) -> np.ndarray:
        try:
            img = self.osr.get_thumbnail((int(max_size[0]), int(max_size[1])))
        except OPENSLIDE_ERRORS as err:
            raise SlideReadError(f"{self.path.name}: cannot read thumbnail: {err}") from err
        return np.asarray(img.convert("RGB"))

    def get_best_level_for_downsample(self, downsample: float) -> int:
        return int(self.osr.get_best_level_for_downsample(float(downsample)))

    def close(self) -> None:
        osr = getattr(self, "osr", None)
        if osr is not None:
            osr.close()
