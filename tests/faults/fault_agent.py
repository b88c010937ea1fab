"""``wei-agent`` as it ships, plus one hook for the fault suite: on SIGUSR1 it writes its live
ZooKeeper sessions (id and password) to ``$WEI_FAULT_SESSION_FILE``, so that a test can expire
a session on the server, for real, as :func:`registry.testing.expire_session` does in-process:
a second connection attaches to the session and closes it.

    python tests/faults/fault_agent.py run --zk ... (the arguments of wei-agent)
"""

from __future__ import annotations

import gc
import json
import os
import signal
import sys
from pathlib import Path

from kazoo.client import KazooClient

from server_agent.cli import run


def write_sessions(_signum: int, _frame: object) -> None:
    sessions = [{"id": c.client_id[0], "password": c.client_id[1].hex()}
                for c in gc.get_objects() if isinstance(c, KazooClient) and c.connected and c.client_id]
    path = Path(os.environ["WEI_FAULT_SESSION_FILE"])
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(sessions))
    tmp.replace(path)


if __name__ == "__main__":
    signal.signal(signal.SIGUSR1, write_sessions)
    sys.exit(run(sys.argv[1:]))
