"""The JSON access log: one line per request, cheap on the hot path.

A record is a dict serialised with orjson into a buffer; the buffer is written out when it holds
64 KiB or once a second, so a request never waits on a write(2). Sampling keeps a fraction of
admitted requests; refusals are always kept when `always_log_refusals` is set, because those
are the lines an operator goes looking for. `time` is written as ISO 8601 UTC with milliseconds
(formatted once per second, then only the milliseconds change).

SIGHUP (and `POST /reload`) reopens the file, so logrotate's move-then-HUP works; a reload that
changes `access_log.path` switches to the new destination at once.
"""
from __future__ import annotations

import asyncio
import logging
import random
import sys
import time
from typing import Any, BinaryIO

import orjson

from .config import AccessLogConfig

_FLUSH_BYTES = 1 << 16

log = logging.getLogger("sluicegate.accesslog")


class _IsoTime:
    """Unix time -> "2025-01-31T12:00:00.123Z", the part before the milliseconds formatted once per second."""

    __slots__ = ("second", "prefix")

    def __init__(self) -> None:
        self.second = -1
        self.prefix = ""

    def __call__(self, t: float) -> str:
        second, ms = divmod(round(t * 1000), 1000)  # rounded to the millisecond (.9996 s is the next second)
        if second != self.second:
            self.second = second
            self.prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self.prefix}.{ms:03d}Z"


iso_time = _IsoTime()


class AccessLog:
    def __init__(self, config: AccessLogConfig):
        self.config = config
        self._out: BinaryIO | None = None
        self._owns = False
        self._open(config.path)
        self._buf = bytearray()
        self._timer: asyncio.TimerHandle | None = None
        self._random = random.random

    def _open(self, path: str | None) -> None:
        """Point at `path` ("-": stdout; None or "off": nowhere). Raises OSError if the file cannot be opened."""
        if path in (None, "off"):
            self._out, self._owns = None, False
        elif path == "-":
            self._out, self._owns = sys.stdout.buffer, False
        else:
            self._out = open(path, "ab")  # noqa: SIM115 - held until the next reopen or close
            self._owns = True

    @property
    def enabled(self) -> bool:
        return self._out is not None

    def wants(self, refused: bool) -> bool:
        """Whether this request gets a line (sampling decided here, before building the record)."""
        if self._out is None:
            return False
        if refused and self.config.always_log_refusals:
            return True
        sample = self.config.sample
        return sample >= 1.0 or self._random() < sample

    def write(self, record: dict[str, Any]) -> None:
        """Buffer one line. `record["time"]` is Unix time in seconds; it is written as ISO 8601 UTC."""
        record["time"] = iso_time(record["time"])
        self._buf += orjson.dumps(record)
        self._buf += b"\n"
        if len(self._buf) >= _FLUSH_BYTES:
            self.flush()
        elif self._timer is None:
            try:
                self._timer = asyncio.get_running_loop().call_later(1.0, self.flush)
            except RuntimeError:
                self.flush()

    def flush(self) -> None:
        self._timer = None
        if self._buf and self._out is not None:
            try:
                self._out.write(self._buf)
                self._out.flush()
            except OSError:
                pass  # a full disk or closed pipe must not take the proxy down
            self._buf.clear()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.flush()
        if self._owns and self._out is not None:
            self._out.close()
        self._out = None

    def reopen(self) -> None:
        """Reopen a file destination (after logrotate moved it), keeping buffered lines. If the path
        cannot be opened, the file already open stays in use (and an error is logged)."""
        if not self._owns or not self.config.path:
            return
        self.flush()
        try:
            out = open(self.config.path, "ab")  # noqa: SIM115
        except OSError as exc:
            log.error("access log: cannot reopen %s (%s); still writing to the file already open",
                      self.config.path, exc.strerror or exc)
            return
        assert self._out is not None
        self._out.close()
        self._out = out

    def reconfigure(self, config: AccessLogConfig) -> str | None:
        """Apply a reloaded `access_log` section: a new path is opened at once (the old destination
        is flushed and closed); otherwise a file is reopened as on SIGHUP. Returns a sentence for the
        reload's answer if the new path cannot be opened (the old destination stays), else None."""
        if config.path == self.config.path:
            self.config = config
            self.reopen()
            return None
        self.flush()
        old_out, old_owns = self._out, self._owns
        try:
            self._open(config.path)
        except OSError as exc:
            self._out, self._owns = old_out, old_owns
            self.config = config.model_copy(update={"path": self.config.path})
            return (f"access_log.path {config.path} cannot be opened ({exc.strerror or exc}), "
                    f"so the access log still goes to {self.config.path}")
        if old_owns and old_out is not None:
            old_out.close()
        self.config = config
        return None
