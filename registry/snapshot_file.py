"""The membership snapshot file: what a watcher serves when ZooKeeper is unreachable at start.

Written atomically after each good snapshot (``WatcherConfig.snapshot_file``);
read by :class:`~registry.watcher.MembershipWatcher` at start only.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from types import MappingProxyType

from .errors import RecordError
from .membership import MembershipSnapshot
from .records import InstanceRecord, instance_from_json, instance_to_json

__all__ = ["FILE_FORMAT", "load_snapshot_file", "write_snapshot_file"]

log = logging.getLogger(__name__)
FILE_FORMAT = "weiserving.membership/1"


def write_snapshot_file(path: Path, snap: MembershipSnapshot) -> None:
    """Atomically replace ``path`` with the snapshot (temp file, fsync, rename)."""
    doc = {
        "format": FILE_FORMAT,
        "service": snap.service,
        "version": snap.version,
        "synced_at": snap.synced_at,
        "instances": [instance_to_json(r) for r in snap.instances.values() if r.id not in snap.held],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, separators=(",", ":"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_snapshot_file(path: Path, service: str, *, now: float) -> MembershipSnapshot | None:
    """The snapshot saved in ``path``, stale since it was synced; None if absent or unusable."""
    try:
        doc = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        log.warning("snapshot file %s unreadable: %s", path, e)
        return None
    if not isinstance(doc, dict) or doc.get("format") != FILE_FORMAT or doc.get("service") != service:
        log.warning("snapshot file %s is not a %s snapshot of %r", path, FILE_FORMAT, service)
        return None
    members: dict[str, InstanceRecord] = {}
    rejected: dict[str, str] = {}
    for i, obj in enumerate(doc.get("instances") or []):
        try:
            rec = instance_from_json(obj)
            members[rec.id] = rec
        except RecordError as e:
            rejected[f"#{i}"] = str(e)
    synced_at = doc.get("synced_at")
    synced_at = float(synced_at) if isinstance(synced_at, int | float) else now
    return MembershipSnapshot(
        service=service,
        version=1,
        instances=MappingProxyType(dict(sorted(members.items()))),
        rejected=MappingProxyType(rejected),
        synced_at=synced_at,
        stale_since=synced_at,
        source="file",
        reason=f"loaded {len(members)} members from {path} (ZooKeeper unreachable)",
    )

