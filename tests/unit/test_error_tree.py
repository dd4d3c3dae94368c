"""router/errors.py draws its error tree in its docstring (the README points there): the drawing
must name every error with its real status and code."""

from __future__ import annotations

import inspect
import re

import router.errors as errors

DRAWN = {
    m.group(1): (int(m.group(2)), m.group(3))
    for m in re.finditer(r"(\w+)\s+(\d{3}) (\w+)", errors.__doc__ or "")
}


def test_drawing_names_every_error() -> None:
    """Every error class with a code is in the docstring's tree."""
    classes = {
        name
        for name, cls in inspect.getmembers(errors, inspect.isclass)
        if cls.__module__ == errors.__name__ and issubclass(cls, errors.RouterError)
    }
    assert len(classes) > 30
    assert classes <= set(DRAWN), sorted(classes - set(DRAWN))


def test_drawing_shows_real_statuses_and_codes() -> None:
    """Each drawn error's status and code are the class's own."""
    for name, (status, code) in DRAWN.items():
        cls = getattr(errors, name)
        assert (cls.status, cls.code) == (status, code), name
