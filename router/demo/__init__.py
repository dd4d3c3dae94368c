"""`layer-router demo`: a complete edge -> regional -> central topology on loopback, each tier a
real layer-router process with its own models and config, a labelled mock LLM behind central,
and a switchboard that cuts and restores the links between tiers."""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from router.demo.runner import DemoOptions, run

__all__ = ["DemoOptions", "run"]


def __getattr__(name: str) -> Any:
    # Imported on first use, not with the package: the runner imports the mock LLM, and
    # `python -m router.demo.mock_llm` (the compose example's LLM) found it imported already
    # and warned at every start that this "may result in unpredictable behaviour".
    if name in __all__:
        from router.demo import runner

        return getattr(runner, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
