"""Direct decoding of the stored JPEG tiles of a TIFF-family slide (SVS, generic TIFF).

OpenSlide decodes the tiles a region touches on every ``read_region`` call;
DeepZoom tiles that straddle stored tiles therefore decode the same stored tile
several times. :class:`TiffLevelSource` reads one pyramid level's stored tiles
by offset (``os.pread``) and decodes each with tifffile's decoder (libjpeg-turbo
through imagecodecs, with the page's shared ``JPEGTables``); the pixels are the
ones OpenSlide returns (checked bit-for-bit on Aperio tiles in the tests).

For a 2x/4x/8x downsample it can decode at reduced scale with libjpeg's DCT
scaling (``scale``), through Pillow's ``draft``: the abbreviated tile stream is
completed with the page's tables and an Adobe APP14 marker that names the
colour transform (RGB tiles of Aperio slides are not YCbCr).
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import imagecodecs
import numpy as np
import tifffile
from PIL import Image
from tifffile.tifffile import jpeg_decode_colorspace

from wsi_mil.errors import SlideReadError

JPEG = 7
PHOTOMETRIC_RGB = 2
PHOTOMETRIC_YCBCR = 6
DCT_SCALES = (1, 2, 4, 8)


def _adobe_marker(transform: int) -> bytes:
    """APP14 'Adobe' segment; transform 0 = RGB (no colour transform), 1 = YCbCr."""
    return b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00" + bytes([transform])


class TiffLevelSource:
    """Stored JPEG tiles of the TIFF page that OpenSlide uses as ``level``.

    Raises :class:`SlideReadError` when the page cannot be decoded directly
    (not tiled, not JPEG, not 8-bit RGB); callers then fall back to OpenSlide.
    ``decode_count`` counts stored-tile decodes (for tests and benches).
    """

    def __init__(self, path: str | Path, level_size_px: tuple[int, int]) -> None:
        self.path = Path(path)
        try:
            self._tif = tifffile.TiffFile(self.path)
        except Exception as err:  # tifffile raises many types on non-TIFF input
            raise SlideReadError(f"{self.path} is not a TIFF file: {err}") from err
        try:
            page = self._find_page(level_size_px)
        except Exception as err:  # a malformed page: close the file, let the caller fall back
            self._tif.close()
            raise SlideReadError(f"{self.path}: cannot scan TIFF pages: {err}") from err
        if page is None:
            self._tif.close()
            raise SlideReadError(
                f"{self.path}: no tiled JPEG RGB page of size {level_size_px} (w, h)"
            )
        self.page = page
        self.tile_w_px = int(page.tilewidth)
        self.tile_h_px = int(page.tilelength)
        self.width_px = int(page.imagewidth)
        self.height_px = int(page.imagelength)
        self.n_rows = -(-self.height_px // self.tile_h_px)
        self.n_cols = -(-self.width_px // self.tile_w_px)
        self._offsets = np.asarray(page.dataoffsets, dtype=np.int64)
        self._counts = np.asarray(page.databytecounts, dtype=np.int64)
        self._tables = page.jpegtables
        self._decode = page.decode
        self._colorspace = jpeg_decode_colorspace(int(page.photometric), int(page.planarconfig),
                                                  tuple(page.extrasamples), bool(page.is_jfif))
        self._fd = os.open(self.path, os.O_RDONLY)
        self.decode_count = 0
        self._dct_ok: bool | None = None
        self._direct_ok: bool | None = None

    def _find_page(self, size_px: tuple[int, int]):
        for page in self._tif.pages:
            if (
                page.is_tiled
                and int(page.compression) == JPEG
                and (int(page.imagewidth), int(page.imagelength)) == tuple(size_px)
                and int(page.samplesperpixel) == 3
                and int(page.bitspersample) == 8
                and int(page.planarconfig) == 1
                and int(page.photometric) in (PHOTOMETRIC_RGB, PHOTOMETRIC_YCBCR)
                and page.imagedepth == 1
            ):
                return page
        return None

    def _raw(self, row: int, col: int) -> tuple[int, bytes]:
        index = row * self.n_cols + col
        count = int(self._counts[index])
        if count == 0:
            return index, b""
        return index, os.pread(self._fd, count, int(self._offsets[index]))

    def read_tile(self, row: int, col: int, scale: int = 1) -> np.ndarray:
        """Decoded stored tile (tile_h/scale, tile_w/scale, 3) uint8 RGB.

        Missing tiles (byte count 0) are white, as OpenSlide paints no pixels there
        and DeepZoom composites them on the (white) background.
        """
        if scale not in DCT_SCALES:
            raise ValueError(f"scale must be one of {DCT_SCALES}, got {scale}")
        index, data = self._raw(row, col)
        out_h, out_w = -(-self.tile_h_px // scale), -(-self.tile_w_px // scale)
        if not data:
            return np.full((out_h, out_w, 3), 255, np.uint8)
        self.decode_count += 1
        if scale == 1:
            return self._decode_full(data, index)
        return self._decode_scaled(data, scale)

    def _decode_full(self, data: bytes, index: int) -> np.ndarray:
        if self._direct_ok is None:  # imagecodecs directly (no tifffile wrapper), checked once
            ref = self._decode(data, index, jpegtables=self._tables)[0][0]
            mine = self._decode_direct(data)
            self._direct_ok = mine.shape == ref.shape and bool(np.array_equal(mine, ref))
            return ref
        if self._direct_ok:
            return self._decode_direct(data)
        return self._decode(data, index, jpegtables=self._tables)[0][0]  # (H, W, 3)

    def _decode_direct(self, data: bytes) -> np.ndarray:
        colorspace, outcolorspace = self._colorspace
        return imagecodecs.jpeg8_decode(data, tables=self._tables, colorspace=colorspace,
                                        outcolorspace=outcolorspace)

    def _jpeg_stream(self, data: bytes) -> bytes:
        transform = 0 if int(self.page.photometric) == PHOTOMETRIC_RGB else 1
        tables = self._tables[2:-2] if self._tables else b""
        return b"\xff\xd8" + _adobe_marker(transform) + tables + data[2:]

    def _decode_scaled(self, data: bytes, scale: int) -> np.ndarray:
        im = Image.open(io.BytesIO(self._jpeg_stream(data)))
        im.draft("RGB", (self.tile_w_px // scale, self.tile_h_px // scale))
        if im.mode != "RGB":
            im = im.convert("RGB")
        # tobytes + frombuffer: one copy (np.asarray(im) makes two)
        return np.frombuffer(im.tobytes(), np.uint8).reshape(im.size[1], im.size[0], 3)

    def dct_scaling_supported(self) -> bool:
        """Whether Pillow decodes this page's tiles exactly like tifffile (checked once)."""
        if self._dct_ok is None:
            self._dct_ok = False
            for index in np.flatnonzero(self._counts > 0)[:1]:
                row, col = divmod(int(index), self.n_cols)
                _, data = self._raw(row, col)
                try:
                    ref = self._decode_full(data, int(index))
                    im = Image.open(io.BytesIO(self._jpeg_stream(data)))
                    im.load()
                    mine = np.asarray(im if im.mode == "RGB" else im.convert("RGB"))
                    self._dct_ok = mine.shape == ref.shape and bool(np.array_equal(mine, ref))
                except Exception:  # noqa: BLE001 - any Pillow failure just disables scaling
                    self._dct_ok = False
        return self._dct_ok

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._tif.close()

    def __enter__(self) -> TiffLevelSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"TiffLevelSource({str(self.path)!r}, {self.width_px}x{self.height_px}, "
            f"tiles {self.tile_w_px}x{self.tile_h_px})"
        )
