"""pcasgd's messages other than errors and progress lines: named loggers under ``pcasgd``
(``pcasgd.resume``, ``pcasgd.exchange``, ...) and the one format both entry points give them
(``pcasgd train`` and ``pcasgd.init()``): ``pcasgd: warning: ...`` on stderr, ``pcasgd: ...``
for information. A program that configures logging itself keeps its own handlers."""

from __future__ import annotations

import logging
import sys

ROOT = "pcasgd"


def get(name: str) -> logging.Logger:
    """The logger of one part of pcasgd (``pcasgd.<name>``)."""
    return logging.getLogger(f"{ROOT}.{name}")


class _Format(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        level = "" if record.levelno == logging.INFO else f"{record.levelname.lower()}: "
        return f"pcasgd: {level}{record.getMessage()}"


class _Stderr(logging.StreamHandler):
    """A handler writing to ``sys.stderr`` as it is at each message (not as it was when made:
    a program, or a test, may replace it)."""

    pcasgd = True

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, _value: object) -> None:
        pass


def to_stderr() -> None:
    """Send pcasgd's messages, information included, to stderr in pcasgd's format (once)."""
    root = logging.getLogger(ROOT)
    if any(getattr(handler, "pcasgd", False) for handler in root.handlers):
        return
    handler = _Stderr()
    handler.setFormatter(_Format())
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    root.propagate = False
