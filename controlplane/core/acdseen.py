"""Which ACD messages a center's counters were already counted from (issue 15: two agent replicas).

A center may run two agent replicas (HA) reading one ACD. The ACD's counters (offered, answered,
answered_within, abandoned: "since my last message") then reach the control plane through both,
and summing the replicas' reports would count every call twice: what the failing detectors, the
drill runner's service level and every total of the health tracker read. So each pushed message
keeps the ACD's own identity, (source, epoch, seq) -- the ACD's name, its start (a restarted ACD
numbers from 1 again in a new epoch) and its message number -- from the agent's report to here,
and a message is counted the first time any replica reports it (model.AcdCount, Report.acd).

That design rather than "only the replica holding a lease reports counters": a lease needs a
coordinator the agents can reach (they have no store access, B6), and a takeover leaves a window in
which the old holder's last messages, acknowledged to the ACD, are in nobody's report; with
identities a replica reports everything it holds, the survivor of a failover re-sends what it has,
an agent re-sends what it does not know was counted (a lost ack), and an ACD retrying a push it got
no answer to, or a load balancer sending each message to one replica only, all come out right:
counting is idempotent per message, as the billing ledger is per report (core/ledger.py).

Memory is bounded per center: MAX_STREAMS (source, epoch) pairs, the least recently heard one
forgotten first, and per stream the seqs above a floor below which all count as seen; the floor
rises over seqs contiguous with it, and over the oldest ones when more than WINDOW are held
apart by a gap (a message no replica will ever report). A message at or below the floor, or of
an epoch older than one forgotten for its source, is taken as counted: at most once, never twice.

Gauges (logged_in, ready, busy, queued, the center's own state) are the ACD's latest state, not a
sum: two replicas whose pushes diverge (one has message 10, the other only 9) would make them flip
with every report. `gauges_newest` keeps, per source, the newest message whose gauges were taken
(same epoch: the higher seq; a newer epoch wins), and says whether a report's are at least as new.
Different sources are not comparable (an agent's own numbering of unnumbered pushes is per
replica): their gauges are taken as they come, as before. At most MAX_STREAMS sources are kept.
A mark no report has carried for `hold_s` (the health tracker's stale time) yields to an older
identity: the replica that had it is gone, or the ACD restarted its numbering without a new epoch,
and gauges must never stay locked to a message nobody reports any more.

Must not: read a clock, do I/O, import anything outside the core.
"""

from __future__ import annotations

from collections.abc import Iterable

from controlplane.core.model import AcdCount, AcdId

# (source, epoch) pairs remembered per center: an ACD and its restarts during a rollout, or a
# few ACDs behind one center, with room to spare; each costs at most WINDOW ints
MAX_STREAMS = 8
# seqs held above a stream's floor while a gap below them stays open: at two messages a second,
# half an hour in which a replica may come back with messages the other never had
WINDOW = 4096


class _Stream:
    __slots__ = ("floor", "above")

    def __init__(self) -> None:
        self.floor = 0  # every seq <= floor is counted (or given up as too old)
        self.above: set[int] = set()  # counted seqs above floor


class AcdSeen:
    """One center's record of the ACD messages counted; `fresh` says which of a report's are new."""

    __slots__ = ("_streams", "_retired", "duplicates", "too_old", "_gauges", "older_gauges")

    def __init__(self) -> None:
        # (source, epoch) -> stream, least recently heard first
        self._streams: dict[tuple[str, int], _Stream] = {}
        # source -> the highest epoch forgotten: its messages and older epochs' are taken as counted
        self._retired: dict[str, int] = {}
        self.duplicates = 0  # messages already counted (another replica's, a re-send, a retry)
        self.too_old = 0  # messages below a floor or of a forgotten epoch, taken as counted
        # source -> (epoch, seq, when last carried) of the newest message whose gauges were
        # taken, least recently carried first
        self._gauges: dict[str, tuple[int, int, float]] = {}
        self.older_gauges = 0  # reports whose gauges were older than ones taken (not taken)

    def gauges_newest(self, g: AcdId, now: float, hold_s: float) -> bool:
        """Whether gauges of message `g` are at least as new as any taken of its source (then
        recorded as the newest): the same message again (the other replica) is taken too, and
        an older one once the newest has not been carried for `hold_s`."""
        last = self._gauges.pop(g.source, None)
        if last is not None and (g.epoch, g.seq) < last[:2] and now - last[2] <= hold_s:
            self._gauges[g.source] = last
            self.older_gauges += 1
            return False
        if len(self._gauges) >= MAX_STREAMS:
            del self._gauges[next(iter(self._gauges))]
        self._gauges[g.source] = (g.epoch, g.seq, now)
        return True

    def fresh(self, msgs: Iterable[AcdCount]) -> list[AcdCount]:
        """The messages of `msgs` not counted before, now marked counted, in the given order."""
        out: list[AcdCount] = []
        for m in msgs:
            key = (m.source, m.epoch)
            s = self._streams.pop(key, None)
            if s is None:
                if m.epoch <= self._retired.get(m.source, -1):
                    self.too_old += 1
                    continue
                s = _Stream()
                if len(self._streams) >= MAX_STREAMS:
                    (src, epoch), _ = next(iter(self._streams.items()))
                    del self._streams[(src, epoch)]
                    self._retired[src] = max(self._retired.get(src, -1), epoch)
                    if len(self._retired) > MAX_STREAMS:
                        # sources are the ids of a center's few ACDs: many is a misconfiguration,
                        # and a bounded record beats remembering each forever
                        del self._retired[next(iter(self._retired))]
            self._streams[key] = s  # most recently heard last
            seq = m.seq
            if seq <= s.floor or seq in s.above:
                self.duplicates += 1
                continue
            s.above.add(seq)
            out.append(m)
            while s.floor + 1 in s.above:
                s.floor += 1
                s.above.discard(s.floor)
            if len(s.above) > WINDOW:
                # a gap no replica fills: give it up, keep the newest WINDOW seqs
                s.floor = min(s.above)
                s.above.discard(s.floor)
                while s.floor + 1 in s.above:
                    s.floor += 1
                    s.above.discard(s.floor)
        return out
