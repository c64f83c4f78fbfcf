"""Domain exceptions, all in one place.

Every message names the bad value and, where there is a closed set, the valid
choices. Library code raises these instead of asserting on user input.
"""


class WsiMilError(Exception):
    """Base class of every error raised on purpose by wsi_mil."""


class ConfigError(WsiMilError, ValueError):
    """A configuration value is missing, of the wrong type or out of range."""


class RegistryError(WsiMilError, KeyError):
    """Unknown or duplicate name in a registry (models, encoders, readers...)."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


# --- slides -----------------------------------------------------------------
class SlideReadError(WsiMilError):
    """A slide could not be opened or read (missing, truncated, not a slide)."""


class CorruptTileError(SlideReadError):
    """A stored tile of a slide does not decode cleanly (corrupt or truncated JPEG data)."""


class TileMismatchError(SlideReadError):
    """The fast tile reader and OpenSlide disagree on a sampled tile of a slide."""


class MissingMppError(WsiMilError):
    """The slide has no physical resolution and none was provided."""


class NoTissueError(WsiMilError):
    """No tile of the slide passes the tissue criteria."""


class ResolutionError(WsiMilError):
    """No pyramid / DeepZoom level matches the requested resolution."""


# --- files ------------------------------------------------------------------
class FileFormatError(WsiMilError):
    """A coords / features / cohort file does not have the expected layout."""


class StaleOutputError(WsiMilError):
    """An existing output was made with other parameters (encoder, weights, tiling)."""


# --- encoders ---------------------------------------------------------------
class WeightsNotFoundError(WsiMilError):
    """Model weights are missing, gated or not downloadable here."""


# --- data / models / evaluation ---------------------------------------------
class CohortError(WsiMilError):
    """The cohort table is invalid (columns, duplicates, conflicting labels...)."""


class TargetError(CohortError):
    """The target cannot be learned or evaluated as asked: no events in a training part, no
    comparable pair in a test fold, a single class in a fold, a continuous-looking label."""


class MissingFeaturesError(CohortError):
    """Slides of the cohort have no feature file."""


class EmptyBagError(WsiMilError):
    """A bag (slide) has no tile."""


class FoldPlanError(WsiMilError):
    """A fold plan cannot be made or does not match the cohort."""


class FoldPlanMismatchError(FoldPlanError):
    """Runs compared pairwise were not made on the same fold plan (folds, patients)."""


class NonFiniteFeaturesError(WsiMilError):
    """Tile features hold NaN or inf (or overflow the in-memory dtype)."""
