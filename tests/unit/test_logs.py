"""The JSON log: warnings go through it, and a flood of alike lines becomes one per interval."""

import logging
import warnings

import orjson
import pytest

from edgeserve.logs import LogThrottle, configure_logging


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def throttle(caplog):
    caplog.set_level(logging.INFO, logger="test.throttle")
    clock = _Clock()
    return LogThrottle(logging.getLogger("test.throttle"), 10.0, clock), clock


def _lines(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "test.throttle"]


def test_one_line_per_key_per_interval(throttle, caplog):
    log, _ = throttle
    assert log.log(logging.WARNING, "a", "refused", {"code": "a"})
    assert not log.log(logging.WARNING, "a", "refused", {"code": "a"})
    assert log.log(logging.WARNING, "b", "refused", {"code": "b"})
    assert [r.code for r in _lines(caplog)] == ["a", "b"]


def test_the_next_line_after_the_interval_counts_what_was_held_back(throttle, caplog):
    log, clock = throttle
    for _ in range(5):
        log.log(logging.WARNING, "a", "refused", {})
    clock.now = 10.0
    log.log(logging.WARNING, "a", "refused", {})
    assert [getattr(r, "suppressed", 0) for r in _lines(caplog)] == [0, 4]


def test_a_disabled_level_is_not_counted(throttle, caplog):
    log, _ = throttle
    assert not log.log(logging.DEBUG, "a", "quiet", {})
    assert log.log(logging.WARNING, "a", "loud", {})
    assert [r.getMessage() for r in _lines(caplog)] == ["loud"]


def test_configure_logging_routes_warnings_into_the_json_log(capsys):
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            configure_logging("INFO", "json")
            warnings.warn("overflow encountered in cast", RuntimeWarning, stacklevel=1)
    finally:
        logging.captureWarnings(False)
        root.handlers[:] = handlers
        root.setLevel(level)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    entry = orjson.loads(lines[0])
    assert entry["logger"] == "py.warnings" and "overflow encountered" in entry["msg"]
