"""Where a slide's physical resolution (um/px) comes from, in order of trust.

1. an explicit override (argument, slide-table ``mpp`` column, ``mpp=`` CLI key);
2. OpenSlide's normalised ``openslide.mpp-x`` / ``openslide.mpp-y`` properties;
3. the TIFF resolution tags ``tiff.XResolution`` with ``tiff.ResolutionUnit``
   ``centimeter`` or ``inch`` (pixels per unit).

Nothing else is guessed: without one of these, :class:`MissingMppError` says how
to provide it. Implausible values (outside ``MPP_RANGE`` um/px, e.g. the 72 dpi
default of image editors) are ignored with a warning.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

from loguru import logger

from wsi_mil.errors import MissingMppError

#: Plausible um/px of a whole-slide image level 0.
MPP_RANGE = (0.01, 50.0)
_UM_PER_UNIT = {"centimeter": 1e4, "inch": 25400.0}


def _plausible(value: float) -> bool:
    return math.isfinite(value) and MPP_RANGE[0] <= value <= MPP_RANGE[1]


def mpp_from_properties(properties: Mapping[str, str]) -> tuple[float, str] | None:
    """``(mpp_x, source)`` from OpenSlide properties, or None when there is no usable value."""
    for key in ("openslide.mpp-x", "openslide.mpp-y"):
        try:
            value = float(properties[key])
        except (KeyError, ValueError):
            continue
        if _plausible(value):
            other = properties.get("openslide.mpp-y") if key == "openslide.mpp-x" else None
            try:
                if other is not None and abs(float(other) - value) > 0.01 * value:
                    logger.warning("non-square pixels: mpp-x={} but mpp-y={} um/px; using mpp-x",
                                   value, other)
            except ValueError:
                pass
            return value, key
        logger.warning("ignoring implausible {}={!r} um/px", key, properties[key])
    unit = str(properties.get("tiff.ResolutionUnit", "")).lower()
    if unit in _UM_PER_UNIT:
        for key in ("tiff.XResolution", "tiff.YResolution"):
            try:
                pixels_per_unit = float(properties[key])
            except (KeyError, ValueError):
                continue
            if pixels_per_unit > 0 and _plausible(_UM_PER_UNIT[unit] / pixels_per_unit):
                return _UM_PER_UNIT[unit] / pixels_per_unit, f"{key} ({unit})"
            logger.warning("ignoring implausible {}={!r} per {}", key, properties[key], unit)
    return None


def resolve_mpp(properties: Mapping[str, str], mpp_override: float | None,
                slide_name: str) -> tuple[float, str]:
    """The level-0 um/px of a slide and its source; the override always wins.

    Raises :class:`MissingMppError` (with the three ways to fix it) when none is found,
    and ``MissingMppError`` too for a non-positive override.
    """
    if mpp_override is not None and not (isinstance(mpp_override, float) and
                                         math.isnan(mpp_override)):
        value = float(mpp_override)
        if not value > 0:
            raise MissingMppError(f"mpp override for {slide_name} must be > 0 um/px, got {value}")
        return value, "override"
    found = mpp_from_properties(properties)
    if found is None:
        raise MissingMppError(
            f"{slide_name}: no physical resolution (no openslide.mpp-x property, no TIFF "
            "resolution tags in centimeter/inch). Provide it: pass mpp_override=<um/px> to "
            "open_slide, add an `mpp` column to the slide table, or give the `mpp=<um/px>` "
            "override on the command line (e.g. mpp=0.25 for 40x, 0.5 for 20x)."
        )
    return found
