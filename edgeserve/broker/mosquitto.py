"""The real Mosquitto broker, run as a child process with a ``BrokerSetup``'s config.

This is the broker edgeserve is built and tested against (2.0, MQTT 5 and 3.1.1): tests
start one per test on a free port, kill it with SIGKILL to play a crash, and start it
again on the same port to check that clients come back. Its log goes to the setup's
``broker.log``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from edgeserve.broker.enrollment import PROBE_USER, BrokerSetup
from edgeserve.broker.process import BrokerProcess

# Debian installs the broker in sbin, which is not on an unprivileged user's PATH.
_SBIN_DIRS = (Path("/usr/sbin"), Path("/usr/local/sbin"))


def find_mosquitto() -> Path | None:
    """The ``mosquitto`` executable, or None when the broker is not installed."""
    found = shutil.which("mosquitto")
    if found:
        return Path(found)
    for directory in _SBIN_DIRS:
        candidate = directory / "mosquitto"
        if candidate.is_file() and shutil.which(candidate.name, path=str(directory)):
            return candidate
    return None


class MosquittoProcess(BrokerProcess):
    """``mosquitto -c <setup.config_path>``; ready once ``PROBE_USER`` logs in."""

    kind = "mosquitto"

    def __init__(self, setup: BrokerSetup, binary: Path | None = None) -> None:
        executable = binary or find_mosquitto()
        if executable is None:
            raise FileNotFoundError("mosquitto is not installed (apt-get install mosquitto)")
        super().__init__(
            [str(executable), "-c", str(setup.config_path)],
            probe_as=setup.address(PROBE_USER),
            log_file=setup.log_file,
        )
        self.setup = setup
