"""The session layer: session_id → Session with its kernel (see ``manager`` for the façade).

One noun per module: ``session`` (state and its transitions), ``table`` (the local map and
capacity), ``queue`` (the per-session FIFO), ``kernel_slot`` (a session's kernel and the
shutdown ladder), ``lifecycle`` (open, replace a kernel, discard), ``cell`` (one cell's run),
``cells`` (the cell verbs handlers call), ``ladder`` (the timeout ladder), ``runs``
(background runs), ``oneshot`` (``/v1/run``), ``files`` (the files API's verbs), ``leases``,
``placement`` (here / there / vacant), ``handoff`` (restore, takeover, loss, graceful stop),
``records`` (registry writes), ``reaper`` and ``upkeep`` (the background loops),
``hibernation`` (hibernate to the snapshot store, restore on the next call), and ``manager``
(the façade handlers call).
"""

from gateway.sessions.manager import SessionManager
from gateway.sessions.placement import Here, There
from gateway.sessions.session import Session

__all__ = ["Here", "Session", "SessionManager", "There"]
