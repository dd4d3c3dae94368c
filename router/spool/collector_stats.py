"""What the central tier's collector has done since it started, for /status and /metrics:
batches and records taken, duplicates, refusals by error code, and when each site last
uploaded (so an operator sees a site that has gone quiet). Counted on the event loop by the
collector's handler; read at scrape time."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

# Sites remembered by their last upload. A collector open on loopback takes the site a batch
# names: the table must not grow with whatever names a client makes up.
MAX_SITES = 1024


@dataclass(slots=True)
class SiteActivity:
    last_upload: float  # Unix time
    batches: int = 0
    records: int = 0


@dataclass(slots=True)
class CollectorStats:
    batches: int = 0
    stored: int = 0  # records whose key was new
    duplicates: int = 0  # records received again, stored once
    removed: int = 0  # older records the retention removed (spool.collector_retention_s, ...)
    refused: Counter[str] = field(default_factory=Counter)  # batches, by error code
    sites: dict[str, SiteActivity] = field(default_factory=dict)

    def taken(self, site: str | None, new: int, duplicates: int) -> None:
        self.batches += 1
        self.stored += new
        self.duplicates += duplicates
        name = site or ""
        activity = self.sites.get(name)
        if activity is None:
            if len(self.sites) >= MAX_SITES:
                return
            activity = self.sites[name] = SiteActivity(time.time())
        activity.last_upload = time.time()
        activity.batches += 1
        activity.records += new + duplicates

    def refuse(self, code: str) -> None:
        self.refused[code] += 1

    def as_status(self) -> dict[str, Any]:
        now = time.time()
        return {
            "batches": self.batches,
            "stored": self.stored,
            "duplicates": self.duplicates,
            "removed": self.removed,
            "refused": dict(sorted(self.refused.items())),
            "sites": {
                name or "(unnamed)": {
                    "last_upload_age_s": round(now - a.last_upload, 3),
                    "batches": a.batches,
                    "records": a.records,
                }
                for name, a in sorted(self.sites.items())
            },
        }
