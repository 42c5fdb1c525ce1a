"""Is the ``ppl`` package that Python found steerppl's?

Another distribution on the package index also installs a top-level ``ppl``. Installed into
the same environment, the two share ``site-packages/ppl/``: whichever ``__init__.py`` was
written last wins, and steerppl's modules are then imported under a foreign package. steerppl's
``__init__`` sets ``__steerppl__ = True``; the core modules call [check][ppl._identity.check]
when they are imported, so the clash is reported with its cause and fix instead of as a
puzzling ``AttributeError`` later.
"""

from __future__ import annotations

import sys

MESSAGE = (
    "The package 'ppl' that Python imported ({where}) is not steerppl's: another distribution "
    "that also installs a top-level 'ppl' package shadows it (steerppl is distributed as "
    "'steerppl' and imported as 'ppl'). Fix: `pip uninstall ppl`, then "
    "`pip install --force-reinstall --no-deps steerppl`, or keep the two in separate virtual "
    "environments."
)


def check() -> None:
    """Raises ImportError if the imported ``ppl`` lacks steerppl's marker."""
    mod = sys.modules.get("ppl")
    if mod is not None and not getattr(mod, "__steerppl__", False):
        where = getattr(mod, "__file__", None) or "no file"
        raise ImportError(MESSAGE.format(where=where))
