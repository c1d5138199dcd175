"""Log lines that carry client data: control characters escaped, length capped, refusals rate-limited per peer.

Anything a client sent (an episode id, a request id, a decoder's message about its bytes) goes
into a log line only through ``client_text``, so a client cannot write a line that looks like
the server's own (newlines, ANSI escapes) or a megabyte-long line. ``RefusalLog`` writes one
line per refused request, at most ``burst`` lines per ``period_s`` per peer host, then one line
saying how many it held back: a client that floods bad requests cannot flood the log.
"""
from __future__ import annotations

import logging
import time
from collections import OrderedDict

CLIENT_TEXT_LIMIT = 160
"""Characters of client data kept in one log field."""


def client_text(value: object, limit: int = CLIENT_TEXT_LIMIT) -> str:
    """``value`` as one printable line: non-printable characters as ``\\xNN``/``\\uNNNN`` escapes (backslash
    doubled), at most ``limit`` characters plus a note of how many were cut."""
    text = value if isinstance(value, str) else str(value)
    cut = len(text) - limit
    if cut > 0:
        text = text[:limit]
    if not text.isprintable() or "\\" in text:
        text = "".join(c if c.isprintable() and c != "\\" else c.encode("unicode_escape").decode("ascii")
                       for c in text)
    return text + (f"...(+{cut} chars)" if cut > 0 else "")


def peer_host(peer: str | None) -> str:
    """The host part of a gRPC peer string (``ipv4:1.2.3.4:5678`` -> ``ipv4:1.2.3.4``): one client's
    connections share one rate limit."""
    if not peer:
        return "unknown"
    head, sep, port = peer.rpartition(":")
    return head if sep and port.isdigit() and head else peer


class RefusalLog:
    """One warning line per refused request, rate-limited per peer host (see the module docstring)."""

    def __init__(self, logger: logging.Logger, burst: int = 10, period_s: float = 10.0, max_peers: int = 4096) -> None:
        self.log = logger
        self.burst = burst
        self.period_s = period_s
        self.max_peers = max_peers
        self._peers: OrderedDict[str, list[float | int]] = OrderedDict()
        """peer host -> [window start, lines written in the window, lines held back]."""

    def refused(self, peer: str | None, fmt: str, *client_args: object, exc_info: BaseException | None = None) -> bool:
        """Log ``fmt % client_args`` (each argument through ``client_text``) unless this peer is over its rate;
        True when a line was written (with ``exc_info``'s traceback when given)."""
        host = peer_host(peer)
        now = time.monotonic()
        state = self._peers.get(host)
        if state is None:
            state = self._peers[host] = [now, 0, 0]
            while len(self._peers) > self.max_peers:
                self._peers.popitem(last=False)
        else:
            self._peers.move_to_end(host)
        if now - state[0] >= self.period_s:
            if state[2]:
                self.log.warning("%s: %d more refusal(s) not logged in the last %.0fs", client_text(host),
                                 state[2], self.period_s)
            state[:] = [now, 0, 0]
        if state[1] >= self.burst:
            state[2] += 1
            return False
        state[1] += 1
        self.log.warning("%s: " + fmt, client_text(host), *(client_text(a) for a in client_args), exc_info=exc_info)
        return True
