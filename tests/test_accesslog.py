"""The access log: ISO 8601 times, reopening after logrotate, a new path on reload. Real files."""
from __future__ import annotations

import orjson

from proxy.accesslog import AccessLog, iso_time
from proxy.config import AccessLogConfig


def test_time_is_iso_8601_utc_with_milliseconds():
    assert iso_time(0.0) == "1970-01-01T00:00:00.000Z"
    assert iso_time(1_700_000_000.25) == "2023-11-14T22:13:20.250Z"
    assert iso_time(1_700_000_000.9996) == "2023-11-14T22:13:21.000Z"  # rounded, into the next second
    assert iso_time(1_700_000_001.001) == "2023-11-14T22:13:21.001Z"


def test_reopen_follows_logrotate_and_reconfigure_follows_a_new_path(tmp_path):
    path = tmp_path / "access.log"
    log = AccessLog(AccessLogConfig(path=str(path)))
    log.write({"time": 0.0, "n": 1})
    log.flush()
    path.rename(tmp_path / "access.log.1")  # logrotate moves the file ...
    log.write({"time": 0.0, "n": 2})  # ... a line buffered before the HUP goes to the moved file
    log.reopen()  # ... then SIGHUP
    log.write({"time": 1.0, "n": 3})
    log.flush()
    assert [orjson.loads(line)["n"] for line in (tmp_path / "access.log.1").read_text().splitlines()] == [1, 2]
    assert [orjson.loads(line) for line in path.read_text().splitlines()] == [{"time": "1970-01-01T00:00:01.000Z", "n": 3}]
    other = tmp_path / "other.log"
    assert log.reconfigure(AccessLogConfig(path=str(other), sample=0.5)) is None
    log.write({"time": 0.0, "n": 4})
    log.flush()
    assert other.read_text().count("\n") == 1 and path.read_text().count("\n") == 1 and log.config.sample == 0.5
    problem = log.reconfigure(AccessLogConfig(path=str(tmp_path / "no-such-dir" / "x.log")))
    assert problem is not None and f"still goes to {other}" in problem
    log.write({"time": 0.0, "n": 5})
    log.close()
    assert other.read_text().count("\n") == 2
