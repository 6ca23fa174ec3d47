"""A griffe extension for the API reference: read wwjax's ``Example:`` docstring sections as examples.

The docstrings follow Google style with a singular ``Example:`` heading (optax's and JAX's habit); griffe knows
only the plural ``Examples:`` as a section of runnable examples and would render the doctests as prose.
"""

import re

import griffe

_EXAMPLE_HEADING = re.compile(r"^(\s*)Example:\s*$", flags=re.MULTILINE)


class ExampleSections(griffe.Extension):
    def on_object(self, *, obj, loader, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _EXAMPLE_HEADING.sub(r"\1Examples:", obj.docstring.value)
