"""The push ACD's held messages on disk (issue 15, "nothing acknowledged is lost"): an agent answers
a push 200 only once the message is written and fsynced here, so an agent that crashes, or stops
while the control plane is out of reach, re-sends them from its next start. Counting is by the
ACD's identity (core/acdseen.py), so a message sent before the crash and again after is counted once.

The file is JSON lines in the agent's state dir: `{"a": [source, epoch, seq, {skill: [4 counts]}]}`
for a message held, `{"d": [[source, epoch, seq], ...]}` for messages the control plane acknowledged.
A torn last line (a crash mid-write) is skipped. It is rewritten atomically (temp file, fsync,
rename, fsync dir) once it holds twice the held messages plus REWRITE_SLACK lines, so it stays
within a few times MAX_HELD_ACD messages (agents/pushacd.py bounds what is held).

Must not: hold more than the carry does, or lose the file on a failed rewrite. The fsync is a
blocking call on the event loop, about a millisecond at a push or two a second: that wait is what
acknowledging a push means.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path

from controlplane.core.model import AcdCount

log = logging.getLogger("callroute.agent.acd")

# lines beyond twice the held messages before a rewrite: rewrites stay rare (one per a few
# hundred acks) and the file small
REWRITE_SLACK = 256


class AcdJournal:
    """Appends held / acknowledged ACD messages; `load` gives back those still held."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.lines = 0

    def load(self, limit: int) -> list[AcdCount]:
        """The messages held when the file was last written, oldest first, at most `limit`."""
        held: dict[tuple[str, int, int], AcdCount] = {}
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return []
        bad = 0
        for line in text.splitlines():
            try:
                rec = json.loads(line)
                if "a" in rec:
                    source, epoch, seq, skills = rec["a"]
                    m = AcdCount(str(source), int(epoch), int(seq),
                                 {str(k): (int(v[0]), int(v[1]), int(v[2]), int(v[3]))
                                  for k, v in skills.items()})
                    held[(m.source, m.epoch, m.seq)] = m
                else:
                    for source, epoch, seq in rec["d"]:
                        held.pop((str(source), int(epoch), int(seq)), None)
            except (ValueError, KeyError, TypeError, IndexError, AttributeError):
                bad += 1  # a torn last line: written but not whole when the agent died
        if bad:
            log.warning("%s: skipped %d unreadable lines", self.path, bad)
        out = list(held.values())
        if len(out) > limit:
            log.warning("%s holds %d ACD messages, more than %d: the newest are dropped",
                        self.path, len(out), limit)
            out = out[:limit]
        self.rewrite(out)
        return out

    def added(self, m: AcdCount) -> None:
        self._append({"a": [m.source, m.epoch, m.seq, {k: list(v) for k, v in m.skills.items()}]},
                     sync=True)

    def done(self, keys: Iterable[tuple[str, int, int]], held: Iterable[AcdCount], n_held: int) -> None:
        """Acknowledged messages: forgotten. A lost "done" line only means a re-send, counted once,
        so it is not fsynced."""
        self._append({"d": [list(k) for k in keys]}, sync=False)
        if self.lines > 2 * n_held + REWRITE_SLACK:
            self.rewrite(held)

    def rewrite(self, held: Iterable[AcdCount]) -> None:
        tmp = self.path.with_suffix(".tmp")
        n = 0
        with open(tmp, "w") as f:
            for m in held:
                f.write(_line({"a": [m.source, m.epoch, m.seq, {k: list(v) for k, v in m.skills.items()}]}))
                n += 1
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        self.lines = n

    def _append(self, rec: dict[str, object], *, sync: bool) -> None:
        with open(self.path, "a") as f:
            f.write(_line(rec))
            if sync:
                f.flush()
                os.fsync(f.fileno())
        self.lines += 1


def _line(rec: dict[str, object]) -> str:
    return json.dumps(rec, separators=(",", ":")) + "\n"
