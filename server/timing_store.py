"""Bounded in-memory store of finished requests' timing records, by response id and by X-Request-Id."""

from __future__ import annotations

import threading
from collections import OrderedDict

from server.schemas import TimingRecord

EVICTED_MEMORY = 10  # remember this many times `size` evicted ids, to say "evicted" rather than "unknown"


class TimingStore:
    def __init__(self, size: int):
        self.size = size
        self._records: OrderedDict[str, TimingRecord] = OrderedDict()
        self._aliases: dict[str, str] = {}  # X-Request-Id -> response id
        self._evicted: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, record: TimingRecord) -> None:
        with self._lock:
            self._records[record.id] = record
            self._aliases[record.request_id] = record.id
            while len(self._records) > self.size:
                old_id, old = self._records.popitem(last=False)
                if self._aliases.get(old.request_id) == old_id:
                    del self._aliases[old.request_id]
                for key in (old_id, old.request_id):
                    self._evicted[key] = None
            while len(self._evicted) > EVICTED_MEMORY * self.size:
                self._evicted.popitem(last=False)

    def get(self, key: str) -> TimingRecord | None:
        """By response id first, then by X-Request-Id."""
        with self._lock:
            record = self._records.get(key)
            if record is None and key in self._aliases:
                record = self._records.get(self._aliases[key])
            return record

    def was_evicted(self, key: str) -> bool:
        with self._lock:
            return key in self._evicted and key not in self._records and key not in self._aliases

    def recent(self, limit: int) -> list[TimingRecord]:
        with self._lock:
            return list(reversed(self._records.values()))[:limit]
