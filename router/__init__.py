"""layer-router: a layer-aware inference request router for edge, regional and central tiers."""

__version__ = "0.1.0"

__all__ = ["__version__"]
