"""wsi_mil: whole-slide images -> tiles -> frozen-encoder features -> MIL heads, honestly evaluated."""
from loguru import logger as _logger

from wsi_mil.version import __version__

# Library code logs through loguru only; entry points configure the sinks.
_logger.disable("wsi_mil")

__all__ = ["__version__"]
