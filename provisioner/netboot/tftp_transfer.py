"""One read transfer as a state machine: which blocks go out next, and when to retransmit. No I/O.

Blocks are numbered from 1 without limit; the 16-bit number on the wire is taken modulo 65536
(block-number rollover, as tftpd-hpa and iPXE do). When an OACK was sent it is "block 0", so a
transfer starts with `base == -1` (nothing acknowledged) and the client's ACK 0 moves it on.

The engine calls `on_ack` / `on_timer`; a SEND verdict means "send blocks next_send..window_hi"
(block 0 meaning the OACK). Retransmission backs off exponentially (rto, 2*rto, ... capped at
max_rto) and the backoff resets as soon as the client makes progress.
"""

from __future__ import annotations

IGNORE, SEND, DONE, GIVE_UP = 0, 1, 2, 3

# A duplicate ACK re-sends the window only if the window has been out this long (in units
# of the smoothed round-trip time). A duplicate arriving sooner is the echo of our own
# retransmission, and answering it would double every packet from then on: the Sorcerer's
# Apprentice bug of RFC 1350 (see RFC 1123 section 4.2.3.1).
DUP_HOLDOFF_RTTS = 2.0
DUP_HOLDOFF_MIN = 0.01  # seconds
DUP_HOLDOFF_UNKNOWN_RTT = 0.05  # seconds, before the first clean sample

# The first OACK is retransmitted only after this many timeouts. A second OACK aborts some
# clients (atftp: "unexpected OACK"), and clients retransmit on their own (ACK 0 if ours was
# lost, the RRQ if the OACK was): with the same timeout on both sides, theirs should win.
OACK_PATIENCE = 2.0


class Transfer:
    """Progress of one RRQ. Created by the engine once the file's bytes are in memory."""

    __slots__ = (
        "client", "name", "data", "blksize", "windowsize", "oack", "last_block",
        "base", "next_send", "window_hi", "rto0", "rto", "max_rto", "retries", "tries",
        "deadline", "heap_at", "sent_at", "clean", "srtt", "retransmits", "started",
        "sock", "want_write", "closed", "send_failed", "request", "first_base",
    )

    def __init__(self, client: tuple[str, int], name: str, data: bytes, *, blksize: int,
                 windowsize: int, oack: bytes | None, rto: float, max_rto: float, retries: int):
        self.client, self.name, self.data = client, name, data
        self.blksize, self.windowsize, self.oack = blksize, windowsize, oack
        self.last_block = len(data) // blksize + 1  # the last block is shorter than blksize, maybe empty
        self.base = -1 if oack is not None else 0  # highest block the client acknowledged
        self.first_base = self.base
        self.next_send = self.window_hi = 0
        self.rto0 = self.rto = rto
        self.max_rto = max(rto, max_rto)
        self.retries, self.tries = retries, 0
        self.deadline = self.heap_at = float("inf")
        self.sent_at = self.started = 0.0
        self.clean = True  # the outstanding window was sent once only (Karn's rule for RTT samples)
        self.srtt: float | None = None
        self.retransmits = 0
        self.sock = None
        self.want_write = self.closed = self.send_failed = False
        self.request = None  # the engine's record of the RRQ, to recognise a repeat of it

    @property
    def progressed(self) -> bool:
        """Whether the client has acknowledged anything yet (the OACK counts)."""
        return self.base > self.first_base

    def begin(self, now: float) -> int:
        self.started = now
        self._window(now)
        if self.oack is not None:
            self.deadline = now + self.rto * OACK_PATIENCE
        return SEND

    def on_ack(self, block: int, now: float) -> int:
        delta = (block - self.base) & 0xFFFF
        if delta == 0:
            return self.on_duplicate(now)
        acked = self.base + delta
        if acked > self.window_hi:
            return IGNORE  # a stale ACK from before a rollover, or a block we never sent
        if self.clean:
            sample = now - self.sent_at
            self.srtt = sample if self.srtt is None else 0.875 * self.srtt + 0.125 * sample
        self.base = acked
        if acked == self.last_block:
            return DONE
        # Progress: the backoff starts over. A partial ACK (RFC 7440: the client saw a gap)
        # lands here too, and the next window starts right after it.
        self.rto, self.tries, self.clean = self.rto0, 0, True
        self._window(now)
        return SEND

    def on_duplicate(self, now: float) -> int:
        """The client repeats its last ACK (or its RRQ): our window was lost, or this is an echo."""
        if now - self.sent_at < self._holdoff():
            return IGNORE
        self.retransmits += 1
        self.clean = False
        self._window(now)
        return SEND

    def on_timer(self, now: float) -> int:
        if self.tries >= self.retries:
            return GIVE_UP
        self.tries += 1
        self.retransmits += 1
        self.rto = min(self.rto * 2, self.max_rto)
        self.clean = False
        self._window(now)
        return SEND

    def _window(self, now: float) -> None:
        if self.base < 0:
            self.next_send = self.window_hi = 0  # the OACK
        else:
            self.next_send = self.base + 1
            self.window_hi = min(self.base + self.windowsize, self.last_block)
        self.sent_at = now
        self.deadline = now + self.rto

    def _holdoff(self) -> float:
        if self.srtt is None:
            return min(DUP_HOLDOFF_UNKNOWN_RTT, self.rto / 2)
        return min(max(DUP_HOLDOFF_RTTS * self.srtt, DUP_HOLDOFF_MIN), self.rto / 2)
