"""The JSON access log: one line per request, cheap on the hot path.

A record is a dict serialised with orjson into a buffer; the buffer is written out when it holds
64 KiB or once a second, so a request never waits on a write(2). Sampling keeps a fraction of
admitted requests; refusals are always kept when `always_log_refusals` is set, because those
are the lines an operator goes looking for.
"""
from __future__ import annotations

import asyncio
import random
import sys
from typing import Any, BinaryIO

import orjson

from .config import AccessLogConfig

_FLUSH_BYTES = 1 << 16


class AccessLog:
    def __init__(self, config: AccessLogConfig):
        self.config = config
        self._out: BinaryIO | None = None
        self._owns = False
        if config.path in (None, "off"):
            self._out = None
        elif config.path == "-":
            self._out = sys.stdout.buffer
        else:
            self._out = open(config.path, "ab")  # noqa: SIM115 - held for the process lifetime
            self._owns = True
        self._buf = bytearray()
        self._timer: asyncio.TimerHandle | None = None
        self._random = random.random

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
        """Reopen a file destination (after logrotate), keeping buffered lines."""
        if self._owns and self.config.path:
            self.flush()
            assert self._out is not None
            self._out.close()
            self._out = open(self.config.path, "ab")  # noqa: SIM115
