"""Parameters of a tiling run (typed; the CLI builds them from its config)."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from wsi_mil.errors import ConfigError
from wsi_mil.io.paths import tiling_name
from wsi_mil.tiling.tissue import TissueParams


@dataclass(frozen=True)
class TilingParams:
    """target_mpp: output resolution (um/px); tile_size: output tile side (px);
    mpp_tolerance: accepted relative gap between the chosen DeepZoom level's um/px and
    ``target_mpp``; min_tissue: minimum tissue fraction of a kept tile, in [0, 1];
    full_tiles_only: drop the partial tiles of the right / bottom edges;
    tissue: tissue detection parameters."""

    target_mpp: float = 0.5
    tile_size: int = 224
    mpp_tolerance: float = 0.1
    min_tissue: float = 0.5
    full_tiles_only: bool = True
    tissue: TissueParams = field(default_factory=TissueParams)

    def __post_init__(self) -> None:
        if not self.target_mpp > 0:
            raise ConfigError(f"target_mpp must be > 0 um/px, got {self.target_mpp}")
        if int(self.tile_size) != self.tile_size or self.tile_size < 8:
            raise ConfigError(f"tile_size must be an integer >= 8 px, got {self.tile_size}")
        if not self.mpp_tolerance >= 0:
            raise ConfigError(f"mpp_tolerance must be >= 0, got {self.mpp_tolerance}")
        if not 0.0 <= self.min_tissue <= 1.0:
            raise ConfigError(f"min_tissue must be in [0, 1], got {self.min_tissue}")
        if isinstance(self.tissue, dict):
            object.__setattr__(self, "tissue", TissueParams(**self.tissue))

    @property
    def name(self) -> str:
        """Output folder name, e.g. ``mpp0.50_px224``."""
        return tiling_name(self.target_mpp, self.tile_size)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        """Canonical json (sorted keys): stored in coords files to detect stale outputs."""
        return json.dumps(self.to_dict(), sort_keys=True)
