"""The end of a leader's term, as the leader's tasks (its timer, the drill runner) see it.

Must not: import the leader or the drill runner (they import this).
"""


class Demoted(Exception):
    """Raised inside the leader's tasks to end its term (lease lost, fence lost)."""
