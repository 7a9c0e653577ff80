"""What one SMTP listener allows, from the config. Apart from the server (aiosmtpd, intake,
storage) so that the supervisor, which binds the sockets and runs no listener, can size
them without importing any of that."""

from __future__ import annotations

import ssl
from dataclasses import dataclass


@dataclass
class ListenerLimits:
    hostname: str
    max_message_size: int
    max_recipients: int
    max_connections: int
    idle_timeout: float  # to complete the next command (aiosmtpd: bytes do not reset it)
    session_timeout: float = 3600.0  # the whole session, however busy
    max_header_size: int = 102_400  # bytes of a message's header block
    max_data_in_flight: int = 104_857_600  # bytes of DATA all sessions hold at once
    require_auth: bool = False
    tls_context: ssl.SSLContext | None = None
    auth_failures_per_address: str = "30/h"  # failed AUTH per client address, all connections
    auth_failures_per_minute: int = 0  # failed AUTH from everyone; 0 = no limit
