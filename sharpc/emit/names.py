"""Which class names a generated optimizer may take.

The class is defined at module level next to the runtime's code, so its name must not shadow
anything that code looks up at run time: a builtin (``super``, ``float``, ``sum``), an import
(``torch``) or a runtime definition. Python compares identifiers after NFKC normalization, so
the full-width 'ｔｏｒｃｈ' *is* ``torch``; names that normalization changes are refused outright.
"""

from __future__ import annotations

import builtins
import keyword
import unicodedata
from collections.abc import Collection

from ..errors import OptimizerError


def check_class_name(name: object, taken: Collection[str]) -> str:
    """``name`` if it can name the generated class, else an OptimizerError saying why not."""
    if not isinstance(name, str) or not name.isidentifier():
        raise OptimizerError(f"{name!r} cannot name a generated optimizer class: it is not a Python identifier")
    normal = unicodedata.normalize("NFKC", name)
    if normal != name:
        raise OptimizerError(f"{name!r} cannot name a generated optimizer class: Python reads it as {normal!r}; "
                             "write it in that form")
    reason = ("it is a Python keyword" if keyword.iskeyword(name)
              else "names starting with _ are reserved" if name.startswith("_")
              else "it would shadow a Python builtin" if hasattr(builtins, name)
              else "it would shadow a name the runtime or the generated code defines" if name in taken
              else None)
    if reason:
        raise OptimizerError(f"{name!r} cannot name a generated optimizer class: {reason}")
    return name
