"""The replica link: how one gateway replica forwards REST calls to the replica that serves
the session — one long-lived, multiplexed connection per pair instead of an HTTP request per
call (``frames``: the wire; ``client``: the forwarding side; ``served``: the serving side)."""
