"""`layer-router demo`: a complete edge -> regional -> central topology on loopback, each tier a
real layer-router process with its own models and config, a labelled mock LLM behind central,
and a switchboard that cuts and restores the links between tiers."""

from router.demo.runner import DemoOptions, run

__all__ = ["DemoOptions", "run"]
