"""A training-loop callback that kills the run like a crash would: an exception after a given number of steps,
before that step's checkpoint is written."""


class Crash(Exception):
    pass


class CrashAfter:
    """Raise :class:`Crash` at the ``n``-th step event this callback sees (counting over every chunk of a stream)."""

    def __init__(self, n: int):
        self.n, self.seen = n, 0

    def __call__(self, event):
        self.seen += 1
        if self.seen >= self.n:
            raise Crash(f"simulated crash after step {event.step}")
        return None
