"""Byte streams of the backup pipeline: hashing taps and a bounded pipe between threads.

Everything here moves data in chunks (pyrage reads 8 KiB and writes 64 KiB at a time), so
the pipeline's memory does not depend on the size of the database.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from collections.abc import Callable
from typing import Any

CHUNK = 1024 * 1024
Advance = Callable[[int], None]


class HashingReader:
    """A readable that computes SHA-256 and the size of what passes through it."""

    def __init__(self, raw: Any, on_bytes: Advance | None = None) -> None:
        self.raw = raw
        self.sha = hashlib.sha256()
        self.size = 0
        self.on_bytes = on_bytes
        self.error: BaseException | None = None

    def read(self, n: int = -1) -> bytes:
        try:
            data = self.raw.read(n if n is not None and n > 0 else CHUNK)
        except BaseException as exc:  # kept so the caller can tell its own failure from a crypto one
            self.error = exc
            raise
        if data:
            self.sha.update(data)
            self.size += len(data)
            if self.on_bytes is not None:
                self.on_bytes(len(data))
        return data

    def drain(self) -> None:
        """Read (and hash) whatever is left, e.g. to finish a checksum after a decryption error."""
        while self.read(CHUNK):
            pass

    def readable(self) -> bool:
        return True

    @property
    def hexdigest(self) -> str:
        return self.sha.hexdigest()


class HashingWriter:
    """A writable that computes SHA-256 and the size of what passes through it."""

    def __init__(self, raw: Any, on_bytes: Advance | None = None) -> None:
        self.raw = raw
        self.sha = hashlib.sha256()
        self.size = 0
        self.on_bytes = on_bytes
        self.error: BaseException | None = None

    def write(self, data: bytes) -> int:
        try:
            self.raw.write(data)
        except BaseException as exc:
            self.error = exc
            raise
        self.sha.update(data)
        self.size += len(data)
        if self.on_bytes is not None:
            self.on_bytes(len(data))
        return len(data)

    def flush(self) -> None:
        flush = getattr(self.raw, "flush", None)
        if flush is not None:
            flush()

    def writable(self) -> bool:
        return True

    @property
    def hexdigest(self) -> str:
        return self.sha.hexdigest()


class PipeAborted(Exception):
    """The other side of a ``Pipe`` gave up; carries its reason."""


class Pipe:
    """A bounded in-memory pipe between a producer thread and a consumer thread.

    Unlike an OS pipe, an end that fails can *abort* the pipe so the other end raises
    instead of seeing a normal end of file: a half-written stream must never be taken for
    a complete one (an upload that saw EOF would complete the object).
    """

    def __init__(self, max_chunks: int = 64) -> None:
        self._queue: queue.Queue[bytes | None] = queue.Queue(max_chunks)
        self._buffer = bytearray()
        self._eof = False
        self._error: BaseException | None = None
        self._lock = threading.Lock()

    # -- producer ---------------------------------------------------------------
    def write(self, data: bytes) -> int:
        if not data:
            return 0
        chunk = bytes(data)
        while True:
            self._raise_if_aborted()
            try:
                self._queue.put(chunk, timeout=0.2)
                return len(chunk)
            except queue.Full:
                continue

    def flush(self) -> None:
        self._raise_if_aborted()

    def writable(self) -> bool:
        return True

    def close(self) -> None:
        """End of stream: the consumer reads what is queued, then EOF."""
        while True:
            self._raise_if_aborted()
            try:
                self._queue.put(None, timeout=0.2)
                return
            except queue.Full:
                continue

    # -- either side --------------------------------------------------------------
    def abort(self, reason: BaseException) -> None:
        with self._lock:
            if self._error is None:
                self._error = reason

    def _raise_if_aborted(self) -> None:
        if self._error is not None:
            raise PipeAborted(str(self._error)) from self._error

    # -- consumer -----------------------------------------------------------------
    def read(self, n: int = -1) -> bytes:
        want = n if n is not None and n > 0 else CHUNK
        while len(self._buffer) < want and not self._eof:
            self._raise_if_aborted()
            try:
                item = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            if item is None:
                self._eof = True
            else:
                self._buffer += item
        self._raise_if_aborted()
        out = bytes(self._buffer[:want])
        del self._buffer[:want]
        return out

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False
