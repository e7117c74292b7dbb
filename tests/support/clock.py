"""A monotonic clock a test moves by hand (``clock.advance(5)``), for code that takes ``clock=``."""


class FakeClock:
    def __init__(self, start: float = 1000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
