"""What can stop a stack command. Library code raises these; only `__main__` turns them into an
exit status and a message."""

from __future__ import annotations


class StackError(Exception):
    """A stack command could not do what was asked; the message says what to check."""


class UnknownService(StackError):
    """A service name that the stack does not run."""


class JavaNotFound(StackError):
    """No JDK whose major version the servers accept."""


class DownloadFailed(StackError):
    """Maven could not resolve a server's jars or distribution."""


class PortTaken(StackError):
    """A port the service needs is held by a process this tool did not start."""


class ServiceFailed(StackError):
    """A service could not be prepared, exited during start-up or did not answer in time.

    The message holds the tails of its logs when there are any.
    """
