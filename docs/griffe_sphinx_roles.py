"""A griffe extension: pccd's docstrings name objects with Sphinx roles
(:class:`Request`, :func:`~pccd.generator.load_pretrained`); on the site each becomes a link
to the object's API entry, resolved from the docstring's scope like Python names are.

A name the site does not document (a private module, another package) stays code, without a
link and without a warning: the links are marked optional for mkdocs-autorefs.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:class|func|meth|mod|data|attr|exc|obj|const):`(~?)([^`<>]+)`")


class SphinxRoles(griffe.Extension):
    """Rewrite Sphinx cross-reference roles into optional autorefs."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is None:
            return
        docstring = obj.docstring

        def link(match: re.Match) -> str:
            short, name = match.groups()
            name = name.strip().lstrip(".")
            head, _, rest = name.partition(".")
            try:
                target = obj.resolve(head)
            except Exception:  # not a name in scope (griffe raises several kinds): keep it
                target = head
            identifier = f"{target}.{rest}" if rest else target
            shown = name.rsplit(".", 1)[-1] if short else name
            return f'<autoref identifier="{identifier}" optional><code>{shown}</code></autoref>'

        docstring.value = ROLE.sub(link, docstring.value)
