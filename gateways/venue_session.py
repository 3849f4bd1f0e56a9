"""The session layer of the venue protocol, without sockets: what both ends keep.

- ``Outbound``: numbering of sequenced messages (1, 2, 3, ... per session and direction) and the
  bounded store of their encoded frames, for resends.
- ``Inbound``: the next seq expected; delivers sequenced messages in seq order exactly once,
  buffers those that arrive early until the hole fills, drops duplicates (seq below expected),
  notices holes (from a later message or from the last seq a session message carries) and says
  when to ask for a resend.
- ``Liveness``: heartbeat due / peer silent, from explicit ``now_ns`` values (no clock read, so
  tests are deterministic and need no sleeps).
- ``ExecIds``: the executions seen in the trading day, so a fill is applied once even if it
  arrives twice (under a new seq, or again in a reconciliation).

``VenueGateway`` (Kilat's side, ``gateways.venues``) and ``VenueAdapter`` (the venue's side,
``gateways.venue_adapter``) are thin socket wrappers around these.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

T = TypeVar("T")

_MISSING = object()

#: A peer heard from for this many heartbeat intervals is silent (down).
SILENCE_INTERVALS = 3


# -- OUTBOUND -------------------------------------------------------------------------------------


class Outbound(Generic[T]):
    """Numbering and resend store of what one side sends in a session.

    ``capacity`` frames are kept (the newest); a resend of anything older is answered by a
    ``SequenceReset`` to the oldest kept seq (``replay`` says so). Frames are kept as the exact
    bytes first sent, so a resend is byte-identical (its original ``ts`` included).
    """

    def __init__(self, capacity: int = 100_000, last_seq: int = 0) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        if last_seq < 0:
            raise ValueError(f"last_seq must be >= 0, got {last_seq}")
        self.capacity = capacity
        self.last_seq = last_seq
        self._first = last_seq + 1  # oldest seq kept
        self._frames: dict[int, T] = {}
        self.evicted = 0

    def next_seq(self) -> int:
        """The seq of the next sequenced message; numbers it (call ``keep`` with its frame). O(1)."""
        self.last_seq += 1
        return self.last_seq

    def keep(self, seq: int, frame: T) -> None:
        """Store the frame of ``seq`` (the one ``next_seq`` just gave). O(1) amortised."""
        if seq != self._first + len(self._frames):
            raise ValueError(
                f"frames must be kept in seq order: expected seq {self._first + len(self._frames)}, got {seq}"
            )
        self._frames[seq] = frame
        while len(self._frames) > self.capacity:
            del self._frames[self._first]
            self._first += 1
            self.evicted += 1

    def add(self, frame_of) -> tuple[int, T]:
        """Number the next message and keep ``frame_of(seq)``; returns (seq, frame). O(1)."""
        seq = self.next_seq()
        frame = frame_of(seq)
        self.keep(seq, frame)
        return seq, frame

    def replay(self, from_seq: int, to_seq: int = 0) -> tuple[int, list[T]]:
        """What to send for a resend of ``from_seq`` .. ``to_seq`` (0 = the last).

        Returns ``(reset_to, frames)``: ``reset_to`` is 0 when every asked-for frame is kept,
        else the seq to announce in a ``SequenceReset`` before ``frames`` (the oldest kept, or
        last_seq + 1 if none is). O(k) for k frames.
        """
        hi = self.last_seq if to_seq <= 0 else min(to_seq, self.last_seq)
        lo = max(from_seq, 1)
        if lo > hi:
            return 0, []
        reset_to = 0
        if lo < self._first:
            reset_to = min(self._first, hi + 1)
            lo = self._first
        return reset_to, [self._frames[s] for s in range(lo, hi + 1)]

    def frames_from(self, seq: int) -> list[T]:
        """Kept frames with seq >= ``seq``, in order. O(k)."""
        return [self._frames[s] for s in range(max(seq, self._first), self.last_seq + 1)]

    @property
    def first_kept(self) -> int:
        """The oldest seq still kept (last_seq + 1 if none). O(1)."""
        return self._first

    def reset(self, last_seq: int = 0) -> None:
        """Start numbering after ``last_seq`` and forget every kept frame (a new session). O(n)."""
        self.last_seq = last_seq
        self._first = last_seq + 1
        self._frames.clear()


# -- INBOUND --------------------------------------------------------------------------------------


class Inbound(Generic[T]):
    """What one side has received in a session: delivers in seq order, exactly once.

    - ``receive(seq, item)`` for a sequenced message: returns what is now deliverable, in order
      (nothing if it is early, a duplicate, or the buffer is full).
    - ``peer_last(seq)`` for the last seq a session message carries: notes a hole, delivers
      nothing.
    - ``after(seq, item)``: an item to deliver once everything up to ``seq`` is delivered (a
      status report must not overtake the reports it describes).
    - ``skip_to(new_seq)``: a ``SequenceReset``; the messages below it will never come.
    - ``resend_due(now_ns, retry_ns)``: the range to ask for, when a hole is known and no
      request is outstanding (or the last one is older than ``retry_ns``).
    """

    def __init__(self, expected: int = 1, max_buffered: int = 100_000) -> None:
        if expected < 1:
            raise ValueError(f"expected must be >= 1, got {expected}")
        self.expected = expected
        self.max_buffered = max_buffered
        self.highest_seen = expected - 1  # the highest seq known to exist
        self._early: dict[int, T] = {}
        self._after: dict[int, list[T]] = {}
        self._requested_at: int | None = None
        # counters
        self.delivered = 0
        self.duplicates = 0
        self.overflow = 0
        self.skipped = 0
        self.gaps = 0  # holes noticed (each run of missing seqs counts once per notice)

    # -- COMMANDS --

    def receive(self, seq: int, item: T) -> list[T]:
        """A sequenced message arrived. O(1) + O(k) for k messages it releases."""
        if seq < self.expected:
            self.duplicates += 1
            return []
        if seq > self.expected:
            if seq in self._early:
                self.duplicates += 1
                return []
            if len(self._early) >= self.max_buffered:
                self.overflow += 1  # it will be asked for again
                self._note(seq)
                return []
            self._early[seq] = item
            self._note(seq)
            return []
        out = [item]
        self._advance(out)
        return out

    def peer_last(self, seq: int) -> None:
        """The peer says its last sequenced seq is ``seq``. O(1)."""
        if seq >= self.expected:
            self._note(seq)

    def after(self, seq: int, item: T) -> list[T]:
        """Deliver ``item`` once every seq up to ``seq`` is delivered. O(1)."""
        if seq < self.expected:
            return [item]
        self._after.setdefault(seq, []).append(item)
        self._note(seq)
        return []

    def skip_to(self, new_seq: int) -> list[T]:
        """The peer will not resend below ``new_seq``: jump there. Returns what that releases,
        in seq order: messages already buffered below ``new_seq`` (they are valid, only the
        missing ones are skipped), held items, then buffered messages from ``new_seq`` on.
        O(b log b) for b buffered items, whatever the jump."""
        if new_seq <= self.expected:
            return []
        out: list[T] = []
        early, after = self._early, self._after
        below = sorted({k for k in early if k < new_seq} | {k for k in after if k < new_seq})
        had = 0
        for seq in below:
            item = early.pop(seq, _MISSING)
            if item is not _MISSING:
                out.append(item)
                had += 1
            held = after.pop(seq, None)
            if held:
                out.extend(held)
        self.delivered += had
        self.skipped += new_seq - self.expected - had
        self.expected = new_seq
        nxt = early.pop(new_seq, _MISSING)
        if nxt is not _MISSING:
            out.append(nxt)
            self._advance(out)
        elif self.expected > self.highest_seen:
            self.highest_seen = self.expected - 1
            self._requested_at = None
        return out

    def resend_due(self, now_ns: int, retry_ns: int) -> tuple[int, int] | None:
        """(from_seq, to_seq) to ask for now, or None. Marks the request as made. O(1)."""
        if not self.has_gap:
            self._requested_at = None
            return None
        if self._requested_at is not None and now_ns - self._requested_at < retry_ns:
            return None
        self._requested_at = now_ns
        return self.expected, self.highest_seen

    def reset(self, expected: int = 1) -> None:
        """A new session (or the peer's numbering went back): expect ``expected`` next and drop
        everything held. O(n)."""
        self.expected = expected
        self.highest_seen = expected - 1
        self._early.clear()
        self._after.clear()
        self._requested_at = None

    # -- QUERIES --

    @property
    def has_gap(self) -> bool:
        """True if some seq below ``highest_seen`` has not been delivered yet. O(1)."""
        return self.highest_seen >= self.expected

    @property
    def last_delivered(self) -> int:
        return self.expected - 1

    @property
    def buffered(self) -> int:
        return len(self._early)

    # -- INTERNALS --

    def _note(self, seq: int) -> None:
        if seq > self.highest_seen:
            if self.highest_seen < self.expected:
                self.gaps += 1  # a new hole (none was known)
            self.highest_seen = seq

    def _advance(self, out: list[T]) -> None:
        """``out[-1]`` was seq ``expected``: move on, releasing buffered and held items."""
        early = self._early
        after = self._after
        while True:
            seq = self.expected
            self.expected = seq + 1
            self.delivered += 1
            if after:
                held = after.pop(seq, None)
                if held:
                    out.extend(held)
            nxt = early.pop(seq + 1, None)
            if nxt is None:
                break
            out.append(nxt)
        if self.expected > self.highest_seen:
            self.highest_seen = self.expected - 1
            self._requested_at = None



# -- LIVENESS -------------------------------------------------------------------------------------


class Liveness:
    """Heartbeats and silence, from explicit times (ns). O(1) everywhere."""

    def __init__(self, interval_ns: int, now_ns: int = 0) -> None:
        if interval_ns <= 0:
            raise ValueError(f"the heartbeat interval must be > 0 ns, got {interval_ns}")
        self.interval_ns = interval_ns
        self.last_sent = now_ns
        self.last_heard = now_ns

    def sent(self, now_ns: int) -> None:
        self.last_sent = now_ns

    def heard(self, now_ns: int) -> None:
        self.last_heard = now_ns

    def heartbeat_due(self, now_ns: int) -> bool:
        """True if nothing was sent for one interval."""
        return now_ns - self.last_sent >= self.interval_ns

    def silent(self, now_ns: int) -> bool:
        """True if nothing was heard for ``SILENCE_INTERVALS`` intervals."""
        return now_ns - self.last_heard > SILENCE_INTERVALS * self.interval_ns


# -- EXECUTION IDS --------------------------------------------------------------------------------


class ExecIds(Generic[T]):
    """The executions of one venue's trading day, by exec_id, with a value each.

    A venue's exec_id is unique within its trading day, so the set is cleared when a new session
    (a new day) starts. It is bounded by ``capacity`` as a safety net: past it the oldest ids are
    forgotten (counted in ``evicted``) and a duplicate of one of those would no longer be caught;
    size ``capacity`` above the busiest day's fill count. O(1) per operation.
    """

    def __init__(self, capacity: int = 2_000_000) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._seen: dict[Hashable, T] = {}
        self.evicted = 0

    def add(self, exec_id: Hashable, value: T) -> bool:
        """Record ``exec_id``; False (and nothing changes) if it was already seen."""
        seen = self._seen
        if exec_id in seen:
            return False
        seen[exec_id] = value
        if len(seen) > self.capacity:
            del seen[next(iter(seen))]
            self.evicted += 1
        return True

    def get(self, exec_id: Hashable) -> T | None:
        return self._seen.get(exec_id)

    def set(self, exec_id: Hashable, value: T) -> None:
        """Replace the value of a seen id (a correction). O(1)."""
        if exec_id in self._seen:
            self._seen[exec_id] = value

    def __contains__(self, exec_id: Hashable) -> bool:
        return exec_id in self._seen

    def __len__(self) -> int:
        return len(self._seen)

    def clear(self) -> None:
        """A new trading day."""
        self._seen.clear()
