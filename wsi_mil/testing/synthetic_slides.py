"""Synthetic H&E-like whole-slide images that OpenSlide opens (tests, benches, demo).

Writes a pyramidal, tiled, JPEG-compressed TIFF with tifffile, one page per
pyramid level (largest first, as Aperio does):

* ``flavor="aperio"``: the first page's ImageDescription starts with
  ``Aperio Image Library`` and carries ``|AppMag = 40|MPP = 0.25``, so OpenSlide
  reports vendor ``aperio`` and ``openslide.mpp-x``.
* ``flavor="generic"``: a plain tiled pyramidal TIFF (vendor ``generic-tiff``)
  whose physical resolution is in the TIFF resolution tags (pixels per cm).

``with_mpp=False`` leaves out every resolution hint. The image is generated tile
by tile from a low-resolution layout (tissue and tumour masks at
``mask_downsample``), so a 40,000 x 30,000 slide never exists in memory at once.
Level-0 pixel ``(x, y)`` is tissue iff ``tissue_mask[y // ds, x // ds]``: the
returned masks are the exact ground truth at ``mask_downsample``.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage

from wsi_mil.errors import ConfigError

FLAVORS = ("aperio", "generic")
N_TEXTURES = 4  # texture variants per class (x 8 flips/rotations)

# RGB colours (uint8 scale) of the synthetic stain
_BACKGROUND = (244.0, 243.0, 245.0)
_STROMA = (232.0, 158.0, 196.0)
_NUCLEUS = (118.0, 62.0, 152.0)
_TUMOR_STROMA = (214.0, 130.0, 185.0)
_TUMOR_NUCLEUS = (72.0, 28.0, 110.0)


@dataclass
class SyntheticSlide:
    """A written synthetic slide and its ground truth.

    ``tissue_mask``/``tumor_mask``: (ceil(H / mask_downsample), ceil(W / mask_downsample))
    bool arrays; one mask pixel = ``mask_downsample`` x ``mask_downsample`` level-0 px.
    ``dimensions`` = level-0 (width, height) px; ``mpp`` = um/px at level 0.
    """

    path: Path
    mpp: float
    tissue_mask: np.ndarray
    tumor_mask: np.ndarray
    mask_downsample: int
    dimensions: tuple[int, int]
    level_dimensions: tuple[tuple[int, int], ...] = ()


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise rescaled to zero mean, unit std; shape (h, w)."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return (field - field.mean()) / (field.std() + 1e-8)


def _make_layout(rng: np.random.Generator, mask_shape: tuple[int, int],
                 tumor_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Tissue = a few irregular blobs; tumour = the top ``tumor_fraction`` of a smooth field."""
    h, w = mask_shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    wobble = _smooth_noise(rng, (h, w), sigma=max(h, w) / 40)
    tissue = np.zeros((h, w), bool)
    n_blobs = int(rng.integers(2, 5))  # side by side, like sections on a glass slide
    for i in range(n_blobs):
        cx = (i + 0.5 + rng.uniform(-0.1, 0.1)) / n_blobs * w
        cy = rng.uniform(0.4, 0.6) * h
        rx = rng.uniform(0.28, 0.4) / n_blobs * w
        ry = rng.uniform(0.22, 0.35) * h
        tissue |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 + 0.25 * wobble < 1.0
    tumor = np.zeros_like(tissue)
    if tumor_fraction > 0 and tissue.any():
        field = _smooth_noise(rng, (h, w), sigma=max(h, w) / 25)
        cut = np.quantile(field[tissue], 1.0 - tumor_fraction)
        tumor = tissue & (field > cut)
    return tissue, tumor


def _draw_nuclei(rng: np.random.Generator, img: np.ndarray, count: int, radius_px: tuple,
                 colour: tuple) -> None:
    """Paint ``count`` elliptic nuclei of ``colour`` into ``img`` (T, T, 3) float, in place."""
    size = img.shape[0]
    for _ in range(count):
        r = rng.uniform(*radius_px)
        cy, cx = rng.uniform(0, size, 2)
        ay, ax = r * rng.uniform(0.7, 1.3), r * rng.uniform(0.7, 1.3)
        y0, y1 = int(max(cy - ay - 1, 0)), int(min(cy + ay + 2, size))
        x0, x1 = int(max(cx - ax - 1, 0)), int(min(cx + ax + 2, size))
        yy, xx = np.mgrid[y0:y1, x0:x1]
        inside = ((yy - cy) / ay) ** 2 + ((xx - cx) / ax) ** 2 <= 1.0
        shade = rng.uniform(0.85, 1.1)
        img[y0:y1, x0:x1][inside] = np.asarray(colour) * shade


def _make_textures(rng: np.random.Generator, size: int, kind: str) -> np.ndarray:
    """(N_TEXTURES * 8, size, size, 3) uint8 texture variants of one class (with flips)."""
    out = []
    for _ in range(N_TEXTURES):
        grain = _smooth_noise(rng, (size, size), sigma=size / 32)[..., None]
        if kind == "background":
            img = np.asarray(_BACKGROUND) + 1.5 * grain + rng.normal(0, 1.0, (size, size, 1))
        else:
            tumor = kind == "tumor"
            stroma = np.asarray(_TUMOR_STROMA if tumor else _STROMA)
            fibres = _smooth_noise(rng, (size, size), sigma=2.0)[..., None]
            img = stroma + 10.0 * grain + 6.0 * fibres
            density = 0.0035 if tumor else 0.0008  # nuclei per px^2
            radius = (4.0, 7.5) if tumor else (2.5, 4.5)
            _draw_nuclei(rng, img, int(density * size * size), radius,
                         _TUMOR_NUCLEUS if tumor else _NUCLEUS)
            img = ndimage.gaussian_filter(img, sigma=(0.8, 0.8, 0))
        img = np.clip(img, 0, 255).astype(np.uint8)
        for k in range(4):
            rot = np.rot90(img, k)
            out.extend([rot, rot[:, ::-1]])
    return np.ascontiguousarray(np.stack(out))


def _block_mean(arr: np.ndarray, factor: int) -> np.ndarray:
    """Mean over ``factor`` x ``factor`` blocks of the first two axes (divisible shapes)."""
    if factor == 1:
        return arr.astype(np.float32)
    h, w = arr.shape[:2]
    return arr.reshape(h // factor, factor, w // factor, factor, *arr.shape[2:]).mean(axis=(1, 3))


def _slice_padded(arr: np.ndarray, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    """``arr[r0:r1, c0:c1]`` with zeros where the window leaves the array."""
    out = np.zeros((r1 - r0, c1 - c0, *arr.shape[2:]), arr.dtype)
    rr0, rr1, cc0, cc1 = max(r0, 0), min(r1, arr.shape[0]), max(c0, 0), min(c1, arr.shape[1])
    if rr1 > rr0 and cc1 > cc0:
        out[rr0 - r0:rr1 - r0, cc0 - c0:cc1 - c0] = arr[rr0:rr1, cc0:cc1]
    return out


class _LevelRenderer:
    """Renders the tiles (tile_px x tile_px, uint8 RGB) of one pyramid level."""

    def __init__(self, downsample: int, tile_px: int, mask_ds: int, tissue: np.ndarray,
                 tumor: np.ndarray, variants: np.ndarray, textures: dict[str, np.ndarray]):
        self.ds, self.tile_px, self.mask_ds = downsample, tile_px, mask_ds
        self.variants = variants  # (cells_y, cells_x): one texture cell per level-0 tile
        self.textures = {k: _block_mean(v.transpose(1, 2, 0, 3), downsample)
                         .transpose(2, 0, 1, 3).astype(np.uint8) for k, v in textures.items()}
        if downsample > mask_ds:  # fractional alpha: block-mean of the binary masks
            f = downsample // mask_ds
            pad = lambda m: np.pad(m, ((0, -m.shape[0] % f), (0, -m.shape[1] % f)))  # noqa: E731
            self.tissue = _block_mean(pad(tissue).astype(np.float32), f)
            self.tumor = _block_mean(pad(tumor).astype(np.float32), f)
            self.upsample = 1
        else:
            self.tissue, self.tumor = tissue.astype(np.float32), tumor.astype(np.float32)
            self.upsample = mask_ds // downsample

    def _alpha(self, mask: np.ndarray, ty: int, tx: int) -> np.ndarray:
        n = self.tile_px // self.upsample
        block = _slice_padded(mask, ty * n, (ty + 1) * n, tx * n, (tx + 1) * n)
        if self.upsample > 1:
            block = np.repeat(np.repeat(block, self.upsample, 0), self.upsample, 1)
        return block[..., None]

    def _texture(self, kind: str, ty: int, tx: int) -> np.ndarray:
        d = self.ds
        var = _slice_padded(self.variants, ty * d, (ty + 1) * d, tx * d, (tx + 1) * d)
        cells = self.textures[kind][var]  # (d, d, c, c, 3)
        return cells.transpose(0, 2, 1, 3, 4).reshape(self.tile_px, self.tile_px, 3)

    def tile(self, ty: int, tx: int) -> np.ndarray:
        a_tissue = self._alpha(self.tissue, ty, tx)
        background = self._texture("background", ty, tx)
        if not a_tissue.any():
            return background
        tissue = self._texture("normal", ty, tx)
        a_tumor = self._alpha(self.tumor, ty, tx)
        if a_tumor.any():
            tumor = self._texture("tumor", ty, tx).astype(np.float32)
            tissue = tissue + a_tumor * (tumor - tissue)
        if a_tissue.min() == 1.0:
            return np.asarray(tissue, np.uint8)
        out = background + a_tissue * (np.asarray(tissue, np.float32) - background)
        return np.clip(out + 0.5, 0, 255).astype(np.uint8)

    def tiles(self, width: int, height: int) -> Iterator[np.ndarray]:
        for ty in range(math.ceil(height / self.tile_px)):
            for tx in range(math.ceil(width / self.tile_px)):
                yield self.tile(ty, tx)


def _description(flavor: str, width: int, height: int, tile_px: int, mpp: float,
                 with_mpp: bool, quality: int) -> str | None:
    if flavor != "aperio":
        return None
    parts = [f"Aperio Image Library v12.0.15 \r\n{width}x{height} ({tile_px}x{tile_px}) "
             f"JPEG/RGB Q={quality}", "AppMag = 40" if mpp <= 0.35 else "AppMag = 20",
             "Filename = wsi_mil_synthetic"]
    if with_mpp:
        parts.append(f"MPP = {mpp:.4f}")
    return "|".join(parts)


def write_synthetic_slide(path: str | Path, width: int = 8192, height: int = 6144,
                          mpp: float = 0.25, tile_px: int = 256, n_levels: int | None = None,
                          flavor: str = "aperio", tumor_fraction: float = 0.0, seed: int = 0,
                          jpeg_quality: int = 85, with_mpp: bool = True,
                          mask_downsample: int = 16, tissue: bool = True) -> SyntheticSlide:
    """Write a pyramidal JPEG TIFF of an H&E-like slide; return it with its true masks.

    ``width``/``height``: level-0 px; ``mpp``: um/px at level 0; ``tile_px``: TIFF tile
    size (power of two); ``n_levels``: pyramid levels (downsamples 1, 2, 4, ...), default
    until the smallest level is < 1024 px; ``tumor_fraction``: share of the tissue area
    drawn as tumour (0 = none); ``mask_downsample``: level-0 px per ground-truth mask px
    (power of two <= tile_px); ``tissue=False`` gives an empty (background-only) slide.
    """
    if flavor not in FLAVORS:
        raise ConfigError(f"flavor must be one of {FLAVORS}, got {flavor!r}")
    pow2 = lambda v: v >= 1 and v & (v - 1) == 0  # noqa: E731
    if not (pow2(tile_px) and tile_px >= 16):
        raise ConfigError(f"tile_px must be a power of two >= 16, got {tile_px}")
    if not (pow2(mask_downsample) and mask_downsample <= tile_px):
        raise ConfigError(f"mask_downsample must be a power of two <= tile_px, got {mask_downsample}")
    if not 0.0 <= tumor_fraction < 1.0:
        raise ConfigError(f"tumor_fraction must be in [0, 1), got {tumor_fraction}")
    if n_levels is None:
        n_levels = 1
        while max(width, height) / 2 ** (n_levels - 1) >= 1024 and 2 ** n_levels <= tile_px:
            n_levels += 1
    if 2 ** (n_levels - 1) > tile_px:
        raise ConfigError(f"n_levels={n_levels} gives downsamples above tile_px={tile_px}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    mask_shape = (math.ceil(height / mask_downsample), math.ceil(width / mask_downsample))
    tissue_mask, tumor_mask = _make_layout(rng, mask_shape, tumor_fraction)
    if not tissue:
        tissue_mask[:] = False
        tumor_mask[:] = False
    textures = {k: _make_textures(rng, tile_px, k) for k in ("background", "normal", "tumor")}
    cells = (math.ceil(height / tile_px), math.ceil(width / tile_px))
    variants = rng.integers(0, N_TEXTURES * 8, cells)
    resolution = None
    if with_mpp and flavor == "generic":
        resolution = (1e4 / mpp, 1e4 / mpp)  # pixels per centimetre
    level_dims = []
    bigtiff = width * height * 3 * 1.4 > 2**32 - 2**25
    with tifffile.TiffWriter(path, bigtiff=bigtiff) as tif:
        for level in range(n_levels):
            ds = 2**level
            w_l, h_l = math.ceil(width / ds), math.ceil(height / ds)
            level_dims.append((w_l, h_l))
            renderer = _LevelRenderer(ds, tile_px, mask_downsample, tissue_mask, tumor_mask,
                                      variants, textures)
            tif.write(
                renderer.tiles(w_l, h_l), shape=(h_l, w_l, 3), dtype=np.uint8,
                tile=(tile_px, tile_px), photometric="rgb", compression="jpeg",
                compressionargs={"level": jpeg_quality}, metadata=None,
                description=_description(flavor, width, height, tile_px, mpp, with_mpp,
                                         jpeg_quality) if level == 0 else None,
                resolution=(resolution[0] / ds, resolution[1] / ds) if resolution else None,
                resolutionunit="CENTIMETER" if resolution else None,
                subfiletype=0 if level == 0 else 1, software=False,
            )
    return SyntheticSlide(path, float(mpp), tissue_mask, tumor_mask, mask_downsample,
                          (int(width), int(height)), tuple(level_dims))


def true_tissue_fraction(slide: SyntheticSlide, coords_level0: np.ndarray,
                         extent_px: int) -> np.ndarray:
    """Exact tissue fraction of square tiles from the ground-truth mask.

    ``coords_level0``: (N, 2) level-0 (x, y) top-left; ``extent_px``: tile side in level-0 px.
    Returns (N,) float in [0, 1] (area outside the slide counts as background).
    """
    ds = slide.mask_downsample
    up = slide.tissue_mask
    integral = np.zeros((up.shape[0] + 1, up.shape[1] + 1), np.float64)
    integral[1:, 1:] = up.cumsum(0).cumsum(1)
    out = np.empty(len(coords_level0))
    for i, (x, y) in enumerate(np.asarray(coords_level0)):
        # area-weighted: split the tile into mask cells, weighting partial cells
        xs = np.clip(np.array([x, x + extent_px]) / ds, 0, up.shape[1])
        ys = np.clip(np.array([y, y + extent_px]) / ds, 0, up.shape[0])
        out[i] = _area_sum(integral, ys, xs) / (extent_px / ds) ** 2
    return out


def _area_sum(integral: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> float:
    """Sum of the mask over a fractional rectangle (bilinear in the integral image)."""

    def at(y: float, x: float) -> float:
        y0, x0 = int(np.floor(y)), int(np.floor(x))
        y1, x1 = min(y0 + 1, integral.shape[0] - 1), min(x0 + 1, integral.shape[1] - 1)
        fy, fx = y - y0, x - x0
        top = integral[y0, x0] * (1 - fx) + integral[y0, x1] * fx
        bottom = integral[y1, x0] * (1 - fx) + integral[y1, x1] * fx
        return top * (1 - fy) + bottom * fy

    return at(ys[1], xs[1]) - at(ys[0], xs[1]) - at(ys[1], xs[0]) + at(ys[0], xs[0])
