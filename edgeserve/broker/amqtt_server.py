"""The embedded broker's process: amqtt with our password file, ACL and client-cert TLS.

Run as ``python -m edgeserve.broker.amqtt_server <setup dir>`` by ``EmbeddedBroker``
when no Mosquitto binary exists, so that a laptop without the broker package can still
run the demo. amqtt's own plugins are loaded from package entry points and its file
authentication expects passlib hashes, so instead this module subclasses the broker and
answers its two questions itself — may this client log in, may it use this topic — with
the same password file (``passwords.verify_password``) and the same rules
(``acl.may_publish``/``may_subscribe``) as Mosquitto, and takes a client's id from its
username as Mosquitto's ``use_username_as_clientid`` does. What it cannot match is said
in ``EmbeddedBroker``'s docstring.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
import sys
from pathlib import Path
from typing import Any

from amqtt.broker import Action, Broker  # type: ignore[import-untyped]
from amqtt.errors import AMQTTError, MQTTError  # type: ignore[import-untyped]
from amqtt.mqtt.protocol.broker_handler import (  # type: ignore[import-untyped]
    BrokerProtocolHandler,
)

from edgeserve.broker import passwords
from edgeserve.broker.acl import may_publish, may_subscribe
from edgeserve.broker.enrollment import BrokerSetup
from edgeserve.broker.process import RELOAD_MARKER

log = logging.getLogger("edgeserve.broker.embedded")
# An entry-point group nothing registers: amqtt loads none of its default plugins
# (anonymous auth, $SYS publisher, taboo topics); this subclass decides instead.
_NO_PLUGINS = "edgeserve.broker.embedded.none"


class EdgeserveAmqttBroker(Broker):  # type: ignore[misc]
    """amqtt's broker with edgeserve's authentication, ACL and mutual TLS."""

    def __init__(self, setup: BrokerSetup) -> None:
        self.setup = setup
        self._users = passwords.read_password_file(setup.password_file)
        super().__init__(_amqtt_config(setup), plugin_namespace=_NO_PLUGINS)

    def reload_passwords(self) -> None:
        self._users = passwords.read_password_file(self.setup.password_file)
        log.info("%s %d users", RELOAD_MARKER.decode(), len(self._users))

    async def _initialize_client_session(
        self, reader: Any, writer: Any, remote_address: str, remote_port: int
    ) -> tuple[Any, Any]:
        """Read the CONNECT, check the password, then use the username as the client id.

        amqtt looks a session up by the id the client asked for (and, for a clean
        session, deletes the one it finds) before it authenticates: a client naming
        itself after another device would cut that device off and drop its session.
        Checking first and taking the id from the username leaves every client only its
        own session, whatever id it sends.
        """
        try:
            handler, session = await BrokerProtocolHandler.init_from_connect(
                reader, writer, self.plugins_manager
            )
        except MQTTError:
            await writer.close()
            raise
        if not self._password_ok(session):
            await writer.close()
            raise AMQTTError(f"refused {session.username!r} from {remote_address}")
        session.client_id = session.username
        if session.clean_session:
            await self._delete_session(session.client_id)
            session.parent = 0
        elif session.client_id in self._sessions:
            session, _ = self._sessions[session.client_id]
            session.parent = 1
        else:
            session.parent = 0
        return handler, session

    def _password_ok(self, session: Any) -> bool:
        username, password = session.username, session.password
        stored = self._users.get(username or "")
        if stored is None or password is None:
            log.info("refused %r: unknown user or no password", username)
            return False
        if not passwords.verify_password(str(password), stored):
            log.info("refused %r: wrong password", username)
            return False
        return True

    async def _authenticate(self, session: Any, listener: dict[str, Any]) -> bool:
        username = session.username
        if not self._password_ok(session):
            return False
        if session.will_flag and not may_publish(
            username, session.will_topic or "", self.setup.service_users
        ):
            log.info("refused %r: last will on %r not allowed", username, session.will_topic)
            return False
        return True

    async def _topic_filtering(self, session: Any, topic: str, action: Action) -> bool:
        username = session.username or ""
        users = self.setup.service_users
        allowed = (
            may_publish(username, topic, users)
            if action == Action.PUBLISH
            else may_subscribe(username, topic, users)
        )
        if not allowed:
            log.info("denied %s of %r to %r", action.value, topic, username)
        return bool(allowed)

    def _create_ssl_context(self, listener: dict[str, Any]) -> ssl.SSLContext:
        # amqtt only asks for a client certificate (CERT_OPTIONAL); we require one.
        context: ssl.SSLContext = super()._create_ssl_context(listener)
        context.verify_mode = ssl.CERT_REQUIRED
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context


def _amqtt_config(setup: BrokerSetup) -> dict[str, Any]:
    listener = {
        "type": "tcp",
        "bind": f"{setup.host}:{setup.port}",
        "ssl": True,
        "cafile": str(setup.pki.ca.cert),
        "certfile": str(setup.pki.server.cert),
        "keyfile": str(setup.pki.server.key),
    }
    return {
        "listeners": {"default": listener},
        "sys_interval": 0,
        "auth": {"allow-anonymous": False},
        "topic-check": {"enabled": True},
    }


async def serve(setup: BrokerSetup) -> None:
    """Run until SIGTERM/SIGINT; SIGHUP re-reads the password file."""
    broker = EdgeserveAmqttBroker(setup)
    await broker.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, broker.reload_passwords)
    log.info("embedded broker listening on %s:%d", setup.host, setup.port)
    await stop.wait()
    await broker.shutdown()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m edgeserve.broker.amqtt_server SETUP_DIR", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("transitions").setLevel(logging.WARNING)  # a line per state change
    log.warning(
        "FALLBACK: embedded amqtt broker, not Mosquitto (no mosquitto binary found). "
        "MQTT 3.1.1 only, no persistence, no packet size limit; for development only."
    )
    asyncio.run(serve(BrokerSetup.load(Path(args[0]))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
