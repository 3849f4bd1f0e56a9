"""The venue protocol's session layer, without sockets: ordering, duplicates, holes, resends,
heartbeats and exec-id de-duplication, driven with explicit times."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateways.venue_session import SILENCE_INTERVALS, ExecIds, Inbound, Liveness, Outbound

# -- a stream in any order, with duplicates, is delivered once, in order ------------------------


@st.composite
def shuffled_with_duplicates(draw, max_n: int = 60):
    n = draw(st.integers(1, max_n))
    seqs = list(range(1, n + 1))
    extra = draw(st.lists(st.integers(1, n), max_size=2 * n))
    stream = seqs + extra
    return n, draw(st.permutations(stream))


@given(shuffled_with_duplicates())
def test_any_permutation_and_duplication_of_a_stream_is_delivered_once_in_order(case):
    n, stream = case
    inbound = Inbound()
    delivered = []
    for seq in stream:
        delivered += inbound.receive(seq, f"m{seq}")
    assert delivered == [f"m{s}" for s in range(1, n + 1)]
    assert inbound.expected == n + 1 and not inbound.has_gap and inbound.buffered == 0
    assert inbound.duplicates == len(stream) - n


@given(shuffled_with_duplicates(), st.data())
def test_a_held_item_comes_right_after_the_seq_it_waits_for(case, data):
    n, stream = case
    after = data.draw(st.integers(0, n))  # a status report written after seq `after`
    position = data.draw(st.integers(0, len(stream)))
    inbound = Inbound()
    delivered = []
    before = 0  # messages delivered when the report arrived
    for i, seq in enumerate(stream + [None]):
        if i == position:
            before = len(delivered)
            delivered += inbound.after(after, "REPORT")
        if seq is not None:
            delivered += inbound.receive(seq, seq)
    assert [d for d in delivered if d != "REPORT"] == list(range(1, n + 1))
    # never before the messages it describes; not held longer than they take to arrive
    assert delivered.index("REPORT") == max(after, before)


@given(st.integers(1, 40), st.integers(0, 40), st.data())
def test_a_sequence_reset_skips_only_what_is_missing(n, drop, data):
    arrived = sorted(data.draw(st.sets(st.integers(2, n + 1), max_size=n)))  # seq 1 is lost
    inbound = Inbound()
    for seq in arrived:
        assert inbound.receive(seq, seq) == []
    new_seq = data.draw(st.integers(2, n + 2))
    released = inbound.skip_to(new_seq)
    # everything already buffered below the reset is valid and delivered; then the run from new_seq
    expected_run = [s for s in arrived if s < new_seq]
    s = new_seq
    while s in arrived:
        expected_run.append(s)
        s += 1
    assert released == expected_run
    assert inbound.expected == max(s, new_seq)
    assert inbound.skipped == (new_seq - 1) - len([a for a in arrived if a < new_seq])


def test_a_sequence_reset_far_ahead_costs_nothing():
    inbound = Inbound()
    assert inbound.skip_to(2**62) == []
    assert inbound.expected == 2**62 and inbound.skipped == 2**62 - 1


def test_a_hole_is_asked_for_once_then_again_after_the_retry_interval():
    inbound = Inbound()
    inbound.receive(1, "a")
    inbound.receive(4, "d")
    assert inbound.has_gap and inbound.gaps == 1
    assert inbound.resend_due(now_ns=1_000, retry_ns=500) == (2, 4)
    assert inbound.resend_due(now_ns=1_200, retry_ns=500) is None  # outstanding
    inbound.peer_last(6)  # a heartbeat says 6 exist: still the same hole, extended
    assert inbound.resend_due(now_ns=1_499, retry_ns=500) is None
    assert inbound.resend_due(now_ns=1_500, retry_ns=500) == (2, 6)
    assert inbound.receive(2, "b") == ["b"]
    assert inbound.receive(3, "c") == ["c", "d"]
    assert inbound.has_gap  # 5 and 6 still missing
    assert inbound.receive(5, "e") + inbound.receive(6, "f") == ["e", "f"]
    assert not inbound.has_gap and inbound.resend_due(now_ns=9_999, retry_ns=1) is None


def test_a_full_buffer_drops_early_messages_to_be_asked_for_again():
    inbound = Inbound(max_buffered=2)
    for seq in (3, 4, 5):
        inbound.receive(seq, seq)
    assert inbound.buffered == 2 and inbound.overflow == 1
    assert inbound.receive(1, 1) + inbound.receive(2, 2) == [1, 2, 3, 4]
    assert inbound.has_gap and inbound.resend_due(0, 1) == (5, 5)


# -- outbound: numbering and the resend store -----------------------------------------------------


@given(st.integers(1, 20), st.integers(0, 60), st.integers(-5, 70), st.integers(-5, 70))
def test_replay_returns_the_kept_frames_of_the_range_and_a_reset_for_the_evicted(cap, n, lo, hi):
    out = Outbound(capacity=cap)
    for _ in range(n):
        out.add(lambda s: f"f{s}")
    reset_to, frames = out.replay(lo, hi)
    top = n if hi <= 0 else min(hi, n)
    wanted = list(range(max(lo, 1), top + 1))
    oldest = max(1, n - cap + 1)
    kept = [s for s in wanted if s >= oldest]
    assert frames == [f"f{s}" for s in kept]
    if wanted and wanted[0] < oldest:
        assert reset_to == min(oldest, top + 1)  # skip straight to what can be sent
    else:
        assert reset_to == 0


def test_frames_must_be_kept_in_seq_order():
    out = Outbound()
    seq = out.next_seq()
    with pytest.raises(ValueError, match="expected seq 1, got 2"):
        out.keep(seq + 1, b"x")


# -- a lossy, reordering, duplicating channel: resends make delivery exact -------------------------


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 80), st.integers(0, 2**32 - 1), st.floats(0.0, 0.5), st.integers(1, 50))
def test_over_a_lossy_channel_resend_requests_deliver_everything_once_in_order(n, seed, loss, cap):
    """Sender and receiver talk through a channel that drops, duplicates and reorders frames in
    both directions; the receiver only knows the sender's last seq from heartbeats. With resend
    requests every message arrives exactly once, in order — or, when the sender's store no
    longer has it, is reported skipped by a SequenceReset."""
    rng = random.Random(seed)
    sender, receiver = Outbound(capacity=cap), Inbound()
    channel: list[tuple] = []  # sender -> receiver
    back: list[tuple] = []  # receiver -> sender
    delivered: list[int] = []

    def put(queue, item):
        if rng.random() < loss:
            return
        queue.insert(rng.randrange(len(queue) + 1), item)
        if rng.random() < 0.1:
            queue.insert(rng.randrange(len(queue) + 1), item)

    now = 0
    for _ in range(n):
        seq, frame = sender.add(lambda s: ("msg", s))
        put(channel, frame)
    for _ in range(20_000):
        now += 1
        if channel:
            kind, a, *rest = channel.pop(0)
            if kind == "msg":
                delivered += receiver.receive(a, a)
            elif kind == "hb":
                receiver.peer_last(a)
            else:  # reset
                delivered += receiver.skip_to(rest[0])
                receiver.peer_last(a)
        if back:
            _, lo, hi = back.pop(0)
            reset_to, frames = sender.replay(lo, hi)
            if reset_to:
                put(channel, ("reset", sender.last_seq, reset_to))
            for frame in frames:
                put(channel, frame)
        if now % 7 == 0:
            put(channel, ("hb", sender.last_seq))  # heartbeats keep flowing
        wanted = receiver.resend_due(now, retry_ns=25)
        if wanted:
            put(back, ("resend", *wanted))
        if receiver.expected > n and not channel:
            break
    assert receiver.expected == n + 1, f"stuck at {receiver.expected} of {n}"
    assert delivered == sorted(set(delivered)), "out of order or twice"
    assert len(delivered) + receiver.skipped == n
    if cap >= n:
        assert receiver.skipped == 0 and delivered == list(range(1, n + 1))


# -- liveness -------------------------------------------------------------------------------------


def test_heartbeat_is_due_after_one_quiet_interval_and_silence_after_three():
    alive = Liveness(interval_ns=100, now_ns=1_000)
    assert not alive.heartbeat_due(1_099) and alive.heartbeat_due(1_100)
    alive.sent(1_100)
    assert not alive.heartbeat_due(1_150)
    assert not alive.silent(1_000 + SILENCE_INTERVALS * 100)
    assert alive.silent(1_000 + SILENCE_INTERVALS * 100 + 1)
    alive.heard(1_250)
    assert not alive.silent(1_301)


def test_a_heartbeat_interval_must_be_positive():
    with pytest.raises(ValueError, match="must be > 0 ns, got 0"):
        Liveness(0)


# -- exec ids -------------------------------------------------------------------------------------


@given(st.lists(st.sampled_from([f"E{i}" for i in range(30)]), max_size=200))
def test_each_exec_id_is_accepted_once(ids):
    seen = ExecIds(capacity=1_000)
    accepted = [i for i in ids if seen.add(i, None)]
    assert accepted == list(dict.fromkeys(ids))


def test_exec_ids_are_bounded_oldest_first_and_cleared_for_a_new_day():
    seen = ExecIds(capacity=3)
    for i in range(5):
        assert seen.add(f"E{i}", i)
    assert len(seen) == 3 and seen.evicted == 2
    assert "E0" not in seen and "E4" in seen and seen.get("E4") == 4
    assert not seen.add("E4", 99) and seen.get("E4") == 4
    seen.clear()
    assert seen.add("E4", 5)
