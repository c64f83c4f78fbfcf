"""Direct decoding of the stored JPEG tiles of a TIFF-family slide (SVS, generic TIFF).

OpenSlide decodes the tiles a region touches on every ``read_region`` call;
DeepZoom tiles that straddle stored tiles therefore decode the same stored tile
several times. :class:`TiffLevelSource` reads one pyramid level's stored tiles
by offset (``os.pread``) and decodes each once with libjpeg-turbo (simplejpeg),
the abbreviated tile stream completed with the page's shared ``JPEGTables`` and
an Adobe APP14 marker that names the colour transform (RGB tiles of Aperio
slides are not YCbCr). The pixels are the ones OpenSlide returns (checked
bit for bit against tifffile's decoder on a probe tile of every level, and
against OpenSlide in the tests).

Decoding is strict, as OpenSlide's: any libjpeg warning ("Corrupt JPEG data:
bad Huffman code", "premature end of data segment", ...) or a tile whose bytes
are cut short by the end of the file raises :class:`CorruptTileError` instead of
returning the partly grey tile that lenient decoders (imagecodecs, Pillow)
give without a word.

For a 2x/4x/8x downsample it decodes at reduced scale with libjpeg's DCT
scaling (``scale``).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import simplejpeg
import tifffile

from wsi_mil.errors import CorruptTileError, SlideReadError

JPEG = 7
PHOTOMETRIC_RGB = 2
PHOTOMETRIC_YCBCR = 6
DCT_SCALES = (1, 2, 4, 8)
N_PROBES = 3  # stored tiles tried to check the decoder against tifffile's


def _adobe_marker(transform: int) -> bytes:
    """APP14 'Adobe' segment; transform 0 = RGB (no colour transform), 1 = YCbCr."""
    return b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00" + bytes([transform])


class TiffLevelSource:
    """Stored JPEG tiles of the TIFF page that OpenSlide uses as ``level``.

    Raises :class:`SlideReadError` when the page cannot be decoded directly
    (not tiled, not JPEG, not 8-bit RGB, or our decoder disagrees with tifffile's);
    callers then fall back to OpenSlide. :meth:`read_tile` raises
    :class:`CorruptTileError` for a corrupt or truncated stored tile.
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
        transform = 0 if int(page.photometric) == PHOTOMETRIC_RGB else 1
        tables = self._tables[2:-2] if self._tables else b""  # without their SOI / EOI
        self._head = b"\xff\xd8" + _adobe_marker(transform) + tables
        self._fd = os.open(self.path, os.O_RDONLY)
        self.decode_count = 0
        try:
            self._probe()
        except BaseException:
            self.close()
            raise

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

    def _where(self, index: int) -> str:
        row, col = divmod(int(index), self.n_cols)
        return (f"{self.path.name}: stored tile (row {row}, col {col}) of the "
                f"{self.width_px}x{self.height_px} level")

    def _raw(self, row: int, col: int) -> tuple[int, bytes]:
        index = row * self.n_cols + col
        count = int(self._counts[index])
        if count == 0:
            return index, b""
        data = os.pread(self._fd, count, int(self._offsets[index]))
        if len(data) != count:
            raise CorruptTileError(f"{self._where(index)} is truncated: {len(data)} of {count} "
                                   "bytes in the file (an interrupted copy?)")
        return index, data

    def _probe(self) -> None:
        """Check our decoder against tifffile's on the first stored tiles that decode cleanly;
        :class:`SlideReadError` if they differ (the caller then falls back to OpenSlide)."""
        for index in np.flatnonzero(self._counts > 0)[:N_PROBES]:
            try:
                _, data = self._raw(*divmod(int(index), self.n_cols))
                mine = self._decode(data, int(index), 1)
            except CorruptTileError:
                continue  # a corrupt probe proves nothing; it fails when a tile needs it
            ref = self.page.decode(data, int(index), jpegtables=self._tables)[0][0]
            if mine.shape != ref.shape or not np.array_equal(mine, ref):
                raise SlideReadError(f"{self.path.name}: the direct JPEG decoder disagrees with "
                                     f"tifffile on stored tile {int(index)}")
            return

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
        return self._decode(data, index, scale)

    def _decode(self, data: bytes, index: int, scale: int) -> np.ndarray:
        out_h, out_w = -(-self.tile_h_px // scale), -(-self.tile_w_px // scale)
        try:
            tile = simplejpeg.decode_jpeg(self._head + data[2:], "RGB", fastdct=False,
                                          fastupsample=False, min_height=out_h,
                                          min_width=out_w, min_factor=scale, strict=True)
        except ValueError as err:  # libjpeg error or warning: the tile is corrupt
            raise CorruptTileError(f"{self._where(index)} does not decode cleanly: {err}") from err
        if tile.shape != (out_h, out_w, 3):
            raise CorruptTileError(f"{self._where(index)} decodes to {tile.shape}, expected "
                                   f"{(out_h, out_w, 3)} (tile header disagrees with the TIFF)")
        return tile

    def dct_scaling_supported(self) -> bool:
        """Whether tiles can be decoded at 1/2, 1/4, 1/8 scale (libjpeg DCT scaling: always)."""
        return True

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
