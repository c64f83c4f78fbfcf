"""Tissue masks from a low-resolution image of the slide.

The default detector, ``otsu_saturation``: HSV saturation, Otsu threshold (never
below ``min_saturation``, so a blank slide gives no tissue), near-white and
near-black pixels dropped, then morphological closing / opening, small holes
filled and small objects removed. Sizes are physical (um, um^2) and converted with
the mask's own resolution, so the result does not depend on the pyramid.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu

from wsi_mil.errors import ConfigError
from wsi_mil.registry import Registry

#: Tissue detectors: ``fn(rgb (h, w, 3) uint8, params, mask_mpp) -> (h, w) bool``.
TISSUE_DETECTORS: Registry[np.ndarray] = Registry("tissue detector")


@dataclass(frozen=True)
class TissueParams:
    """Tissue detection parameters (all have config keys under ``tissue.``).

    method: registered detector name (``list_tissue_detectors()``).
    mask_mpp: resolution of the mask in um/px (coarser = faster; 8 um/px ~ 1.25x).
    min_saturation: floor of the Otsu threshold on saturation, in [0, 1].
    white_min_rgb: pixels whose darkest channel is above this (0-255) are background.
    black_max_rgb: pixels whose brightest channel is below this (0-255) are dropped
        (black borders, pen, scanner artefacts).
    closing_um / opening_um: radius (um) of the closing (bridges gaps) and opening
        (removes specks) disks; 0 disables.
    min_region_um2: tissue objects smaller than this area (um^2) are removed.
    min_hole_um2: holes smaller than this area (um^2) are filled.
    """

    method: str = "otsu_saturation"
    mask_mpp: float = 8.0
    min_saturation: float = 0.05
    white_min_rgb: int = 220
    black_max_rgb: int = 25
    closing_um: float = 16.0
    opening_um: float = 8.0
    min_region_um2: float = 20000.0
    min_hole_um2: float = 20000.0

    def __post_init__(self) -> None:
        if self.method not in TISSUE_DETECTORS:
            raise ConfigError(f"tissue.method={self.method!r} unknown; available: "
                              f"{list_tissue_detectors()}")
        if not self.mask_mpp > 0:
            raise ConfigError(f"tissue.mask_mpp must be > 0 um/px, got {self.mask_mpp}")
        if not 0.0 <= self.min_saturation <= 1.0:
            raise ConfigError(f"tissue.min_saturation must be in [0, 1], got {self.min_saturation}")
        for name in ("closing_um", "opening_um", "min_region_um2", "min_hole_um2"):
            if getattr(self, name) < 0:
                raise ConfigError(f"tissue.{name} must be >= 0, got {getattr(self, name)}")

    def to_dict(self) -> dict:
        return asdict(self)


def list_tissue_detectors() -> list[str]:
    """Names of the registered tissue detectors."""
    return TISSUE_DETECTORS.list()


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation (h, w) uint8 0-255 of an (h, w, 3) uint8 RGB image."""
    hi = rgb.max(axis=2).astype(np.int32)
    lo = rgb.min(axis=2).astype(np.int32)
    return np.where(hi > 0, (hi - lo) * 255 // np.maximum(hi, 1), 0).astype(np.uint8)


def _disk(radius_px: int) -> np.ndarray:
    r = int(radius_px)
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    return xx**2 + yy**2 <= r**2


def clean_mask(mask: np.ndarray, params: TissueParams, mask_mpp: float) -> np.ndarray:
    """Closing, opening, hole filling and small-object removal of a (h, w) bool mask."""
    px_area_um2 = mask_mpp**2
    close_px = int(round(params.closing_um / mask_mpp))
    open_px = int(round(params.opening_um / mask_mpp))
    if close_px > 0:
        pad = close_px + 1  # pad so closing does not erode the image border
        padded = np.pad(mask, pad, mode="edge")
        mask = ndimage.binary_closing(padded, _disk(close_px))[pad:-pad, pad:-pad]
    if open_px > 0:
        mask = ndimage.binary_opening(mask, _disk(open_px))
    min_hole_px = math.ceil(params.min_hole_um2 / px_area_um2)
    if min_hole_px > 1:
        holes, n = ndimage.label(~mask)
        if n:
            sizes = np.bincount(holes.ravel())
            border = np.unique(np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]]))
            fill = sizes < min_hole_px
            fill[0] = False
            fill[border] = False  # background touching the border is not a hole
            mask = mask | fill[holes]
    min_region_px = math.ceil(params.min_region_um2 / px_area_um2)
    if min_region_px > 1:
        labels, n = ndimage.label(mask)
        if n:
            sizes = np.bincount(labels.ravel())
            keep = sizes >= min_region_px
            keep[0] = False
            mask = keep[labels]
    return mask


def _colour_guard(rgb: np.ndarray, params: TissueParams) -> np.ndarray:
    """False on near-white and near-black pixels."""
    return (rgb.min(axis=2) <= params.white_min_rgb) & (rgb.max(axis=2) >= params.black_max_rgb)


@TISSUE_DETECTORS.register("otsu_saturation")
def otsu_saturation(rgb: np.ndarray, params: TissueParams, mask_mpp: float) -> np.ndarray:
    """Otsu on HSV saturation (floored at ``min_saturation``) + colour guard + clean-up."""
    sat = ndimage.median_filter(saturation(rgb), size=3)
    floor = params.min_saturation * 255.0
    thr = floor if sat.min() == sat.max() else max(float(threshold_otsu(sat)), floor)
    return clean_mask((sat > thr) & _colour_guard(rgb, params), params, mask_mpp)


@TISSUE_DETECTORS.register("saturation")
def fixed_saturation(rgb: np.ndarray, params: TissueParams, mask_mpp: float) -> np.ndarray:
    """A fixed threshold ``min_saturation`` on HSV saturation (no Otsu) + clean-up."""
    sat = ndimage.median_filter(saturation(rgb), size=3)
    return clean_mask((sat > params.min_saturation * 255.0) & _colour_guard(rgb, params),
                      params, mask_mpp)


def make_tissue_mask(rgb: np.ndarray, params: TissueParams, mask_mpp: float) -> np.ndarray:
    """(h, w) bool tissue mask of an (h, w, 3) uint8 RGB image at ``mask_mpp`` um/px."""
    detector: Callable[..., np.ndarray] = TISSUE_DETECTORS.get(params.method)
    return np.asarray(detector(rgb, params, mask_mpp), dtype=bool)
