"""The keeper's exception root.

Every error the keeper raises on purpose derives from `KeeperError`; its docstring is the
default message, so `raise SomeError()` already tells the operator what went wrong.

Its `exit_code` is the command's exit status: 1 by default, for what may pass on its own (a
database or an RPC out of reach: systemd restarts the keeper), `EX_CONFIG` (78) for what only an
operator can mend (a bad configuration field, a key that does not decrypt, the wrong chain, a
taken health port), which the unit's `RestartPreventExitStatus=` lists.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

EX_CONFIG = 78  # sysexits.h: a configuration error; systemd does not restart the keeper after it


class KeeperError(Exception):
    """The keeper failed."""

    exit_code: int = 1

    def __init__(self, message: str | None = None, *, help: str | None = None) -> None:  # noqa: A002
        self.message = message or (type(self).__doc__ or "").strip() or type(self).__name__
        self.help = help
        super().__init__(self.message)

    def __str__(self) -> str:
        if self.help:
            return f"{self.message}\n  help: {self.help}"
        return self.message


class PermanentError(KeeperError):
    """A configuration the keeper cannot run with: restarting it would fail the same way."""

    exit_code = EX_CONFIG


@contextmanager
def unwrap_group() -> Iterator[None]:
    """Re-raise the one real error of an anyio task group instead of its ExceptionGroup.

    A task group wraps what its tasks raise in an ExceptionGroup; callers up the stack catch
    typed errors (`RpcUnavailable`, `FatalReorg`), which a group would hide. When the group holds
    a single exception (nested groups flattened), that exception is raised as itself.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        leaves = list(_leaves(group))
        if len(leaves) == 1:
            raise leaves[0] from group
        raise


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc
