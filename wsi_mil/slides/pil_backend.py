"""PIL backend of :class:`SlideReader`: single-level images (PNG, JPEG, flat TIFF) in memory.

Built on :class:`openslide.ImageSlide`, so ``.osr`` works with
``openslide.deepzoom.DeepZoomGenerator`` exactly like the OpenSlide backend. The
resolution comes from the image's dpi (``mpp = 25400 / dpi``) when it is plausible,
else from ``mpp_override``, else :class:`MissingMppError`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import openslide
from PIL import Image, UnidentifiedImageError

from wsi_mil.errors import SlideReadError
from wsi_mil.slides.base import READERS, SlideReader
from wsi_mil.slides.mpp import resolve_mpp


@READERS.register("pil")
class PilImageReader(SlideReader):
    """A whole image file read with Pillow (one pyramid level, held in memory)."""

    backend = "pil"

    def __init__(self, path: str | Path, mpp_override: float | None = None) -> None:
        self.path = Path(path)
        self.slide_id = self.path.stem
        if not self.path.exists():
            raise SlideReadError(f"image file not found: {self.path}")
        try:
            with Image.open(self.path) as img:
                img.load()
                dpi = img.info.get("dpi")
                image = img.convert("RGB")
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as err:
            raise SlideReadError(f"{self.path.name}: not an image Pillow can read: {err}") from err
        self.properties = {"openslide.vendor": "pil"}
        if dpi and float(dpi[0]) > 0:
            self.properties.update({"tiff.XResolution": str(float(dpi[0])),
                                    "tiff.YResolution": str(float(dpi[1])),
                                    "tiff.ResolutionUnit": "inch"})
        self.mpp, self.mpp_source = resolve_mpp(self.properties, mpp_override, self.path.name)
        self.osr = openslide.ImageSlide(image)
        self.dimensions = tuple(int(v) for v in image.size)
        self.level_count = 1
        self.level_dimensions = (self.dimensions,)
        self.level_downsamples = (1.0,)

    def read_region(self, xy_level0: tuple[int, int], level: int,
                    size_px: tuple[int, int]) -> np.ndarray:
        if level != 0:
            raise SlideReadError(f"{self.path.name}: level {level} requested; valid levels: [0]")
        img = self.osr.read_region((int(xy_level0[0]), int(xy_level0[1])), 0,
                                   (int(size_px[0]), int(size_px[1])))
        rgba = np.asarray(img)
        out = rgba[..., :3].copy()
        out[rgba[..., 3] == 0] = 255  # outside the image: white, as OpenSlide's background
        return out

    def get_thumbnail(self, max_size: tuple[int, int]) -> np.ndarray:
        return np.asarray(self.osr.get_thumbnail((int(max_size[0]), int(max_size[1]))).convert("RGB"))

    def get_best_level_for_downsample(self, downsample: float) -> int:
        return 0

    def close(self) -> None:
        self.osr.close()
