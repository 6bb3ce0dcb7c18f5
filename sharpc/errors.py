"""Errors users can act on: one line, with the position in their input when there is one."""

from __future__ import annotations


class SharpcError(ValueError):
    """Base class of every error sharpc raises on purpose (bad input, no derivation, ...)."""


class ParseError(SharpcError):
    """The target text is not in the language; ``position`` is a 0-based column."""

    def __init__(self, message: str, text: str = "", position: int | None = None):
        self.text = text
        self.position = position
        where = f" at column {position + 1}" if position is not None else ""
        snippet = f": {text[max(position - 10, 0):position + 10]!r}" if position is not None and text else ""
        super().__init__(f"{message}{where}{snippet}")


class DerivationError(SharpcError):
    """No strategy could represent the target (the message says why each declined)."""


class OptimizerError(SharpcError):
    """Misuse of an emitted optimizer, or a step that could not be completed safely."""
