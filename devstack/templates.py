"""The services' configuration files, kept as templates in `templates/` beside this module."""

from __future__ import annotations

from pathlib import Path
from string import Template

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"


def render(name: str, **values: object) -> str:
    """The template `name` with every `$placeholder` filled; a missing value is a KeyError."""
    return Template((TEMPLATES_DIR / name).read_text()).substitute(values)
