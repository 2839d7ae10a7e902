"""What every place a backup can live shares: the object names, the storage interface and
the writer a backup streams into."""

from __future__ import annotations

import abc
import contextlib
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

log = logging.getLogger("hokmdb.backup")


DATA_SUFFIX = ".dump.age"
MANIFEST_SUFFIX = ".manifest.json"
PARTIAL_SUFFIX = ".partial"
MB = 1024 * 1024


@dataclass(frozen=True)
class StoredObject:
    name: str
    size: int
    modified: datetime


class Storage(abc.ABC):
    """Where backups live. ``writer`` makes an object appear only on commit."""

    kind = "abstract"

    @abc.abstractmethod
    def url(self, name: str) -> str: ...

    @abc.abstractmethod
    def writer(self, name: str, on_bytes: Any = None) -> contextlib.AbstractContextManager[ObjectWriter]: ...

    @abc.abstractmethod
    def reader(self, name: str) -> contextlib.AbstractContextManager[Any]: ...

    @abc.abstractmethod
    def size(self, name: str) -> int | None: ...

    @abc.abstractmethod
    def read_text(self, name: str) -> str | None: ...

    @abc.abstractmethod
    def write_text(self, name: str, text: str) -> None:
        """Atomically (re)write a small object: readers see the old or the new text, never half."""

    @abc.abstractmethod
    def list(self) -> list[StoredObject]: ...

    @abc.abstractmethod
    def delete(self, name: str) -> None: ...

    def stale_uploads(self, older_than: datetime) -> list[tuple[str, str]]:
        return []

    def abort_upload(self, name: str, upload_id: str) -> None:
        pass


class ObjectWriter(abc.ABC):
    """Write, then ``commit`` (the object appears) or ``abort`` (nothing appears)."""

    @abc.abstractmethod
    def write(self, data: bytes) -> int: ...

    def flush(self) -> None:
        pass

    def writable(self) -> bool:
        return True


# -- local directory ----------------------------------------------------------------------
