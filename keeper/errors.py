"""The keeper's exception root.

Every error the keeper raises on purpose derives from `KeeperError`; its docstring is the
default message, so `raise SomeError()` already tells the operator what went wrong.
"""

from __future__ import annotations


class KeeperError(Exception):
    """The keeper failed."""

    def __init__(self, message: str | None = None, *, help: str | None = None) -> None:  # noqa: A002
        self.message = message or (type(self).__doc__ or "").strip() or type(self).__name__
        self.help = help
        super().__init__(self.message)

    def __str__(self) -> str:
        if self.help:
            return f"{self.message}\n  help: {self.help}"
        return self.message
