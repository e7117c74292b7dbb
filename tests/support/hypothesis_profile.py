"""A pytest plugin: Hypothesis runs without its per-example deadline in every suite here.

A deadline is a timing assertion: on a loaded 2-core machine an example that normally takes
10 ms can take 400 ms, and Hypothesis then fails the test with ``DeadlineExceeded`` although
nothing is wrong. Tests here never assert timings (speed lives in ``bench/``), so the profile
loaded for every suite turns the deadline off; a test's own ``@settings`` keeps its other
choices (examples, steps) and inherits this.

Loaded through ``pytest.ini`` (``-p tests.support.hypothesis_profile``).
"""

from hypothesis import settings

settings.register_profile("khala", deadline=None)
settings.load_profile("khala")
