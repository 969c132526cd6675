"""The article's examples, written with fastnn (used by the ``fastnn`` command and the tests)."""
