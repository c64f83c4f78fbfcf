"""Fixtures of the fault-injection suite (defined in reliability_builders)."""
from reliability_builders import cohort, histo, reference_features, slow_encoder  # noqa: F401
