"""A small authoritative DNS server on loopback for tests: UDP and TCP, answers from a dict.

    with DnsServer() as server:
        server.add("example.test", "MX", "10 mx1.example.test.", ttl=60)
        server.add("mx1.example.test", "A", "127.0.0.1")
        server.fail("broken.test", "servfail")      # or "timeout" (no reply at all)
        server.in_turn("rebind.test", "A", "127.0.0.1", "127.0.0.3")  # DNS rebinding
        resolver = Resolver([server.nameserver])
        ...
        assert server.count("example.test", "MX") == 1

A name with records of any type exists; asked for another type it gets NODATA, and a name
with no records at all gets NXDOMAIN, both with an SOA (minimum `negative_ttl`) so that
resolvers may cache the negative answer. A UDP reply larger than 512 bytes (or the client's
EDNS size) is sent truncated, so the client retries over TCP, as with a real server.
Failures can be set per name or for every name (`fail(None, ...)`), and cleared with `heal`.
`in_turn` makes successive queries get successive answers (TTL 0, the last one repeating),
as an attacker's server does for DNS rebinding; `set` changes an answer for good.
Uses dnspython's wire format; the sockets run on their own thread.
"""

from __future__ import annotations

import contextlib
import socket
import socketserver
import threading
from collections import Counter, defaultdict
from typing import Any, Literal

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

Failure = Literal["servfail", "refused", "timeout"]
LOOPBACK = "127.0.0.1"
_ALL = "*"


def _key(name: str) -> str:
    return name.strip().rstrip(".").lower()


class DnsServer:
    def __init__(self, negative_ttl: int = 60) -> None:
        self.negative_ttl = negative_ttl
        self._records: dict[str, dict[str, list[tuple[int, str]]]] = defaultdict(dict)
        self._failures: dict[str, Failure] = {}
        self._turns: dict[tuple[str, str], list[str]] = {}  # answers still to give, in order
        self._queries: Counter[tuple[str, str]] = Counter()
        self.transports: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._udp: socketserver.UDPServer | None = None
        self._tcp: socketserver.TCPServer | None = None
        self._threads: list[threading.Thread] = []
        self.port = 0

    # --- zone -----------------------------------------------------------------------

    def add(self, name: str, rtype: str, value: str, ttl: int = 300) -> DnsServer:
        """Add one record; `value` in zone-file text ("10 mx.example.", '"a" "b"', "1.2.3.4")."""
        with self._lock:
            self._records[_key(name)].setdefault(rtype.upper(), []).append((ttl, value))
        return self

    def set(self, name: str, rtype: str, *values: str, ttl: int = 300) -> DnsServer:
        """Replace the records of one type (no values: remove them)."""
        with self._lock:
            kinds = self._records[_key(name)]
            if values:
                kinds[rtype.upper()] = [(ttl, value) for value in values]
            else:
                kinds.pop(rtype.upper(), None)
        return self

    def in_turn(self, name: str, rtype: str, *values: str) -> DnsServer:
        """The first query for (name, type) gets values[0], the next values[1], ..., every
        later one the last value; TTL 0, so that no resolver may cache them."""
        with self._lock:
            self._records[_key(name)][rtype.upper()] = [(0, values[-1])]
            self._turns[(_key(name), rtype.upper())] = list(values)
        return self

    def fail(self, name: str | None, how: Failure = "servfail") -> DnsServer:
        """Answer queries for `name` (None: every name) with a failure."""
        with self._lock:
            self._failures[_ALL if name is None else _key(name)] = how
        return self

    def heal(self, name: str | None = None) -> DnsServer:
        """Stop failing for `name` (None: for every name)."""
        with self._lock:
            if name is None:
                self._failures.clear()
            else:
                self._failures.pop(_key(name), None)
        return self

    def count(self, name: str, rtype: str) -> int:
        """How many queries for (name, type) arrived."""
        with self._lock:
            return self._queries[(_key(name), rtype.upper())]

    @property
    def nameserver(self) -> str:
        """The `[dns] nameservers` entry for this server."""
        return f"{LOOPBACK}:{self.port}"

    # --- answering -------------------------------------------------------------------

    def answer(self, wire: bytes, transport: str) -> bytes | None:
        """The reply to one query in wire format, or None to stay silent."""
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None
        if not query.question:
            return None
        question = query.question[0]
        name = _key(question.name.to_text())
        rtype = dns.rdatatype.to_text(question.rdtype)
        with self._lock:
            self._queries[(name, rtype)] += 1
            self.transports[transport] += 1
            failure = self._failures.get(name) or self._failures.get(_ALL)
            kinds = {kind: list(rows) for kind, rows in self._records.get(name, {}).items()}
            turns = self._turns.get((name, rtype))
            if turns and failure is None:
                kinds[rtype] = [(0, turns.pop(0) if len(turns) > 1 else turns[0])]
        if failure == "timeout":
            return None
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if failure is not None:
            response.set_rcode(dns.rcode.SERVFAIL if failure == "servfail" else dns.rcode.REFUSED)
            return response.to_wire()
        rows = kinds.get(rtype, [])
        if rows:
            ttl = min(row_ttl for row_ttl, _ in rows)
            values = [value for _, value in rows]
            response.answer.append(
                dns.rrset.from_text_list(question.name, ttl, "IN", rtype, values)
            )
        else:
            if not kinds:
                response.set_rcode(dns.rcode.NXDOMAIN)
            response.authority.append(self._soa(question.name))
        max_size = (
            65535 if transport == "tcp" else max(512, query.payload if query.edns >= 0 else 512)
        )
        try:
            return response.to_wire(max_size=max_size)
        except dns.exception.TooBig:
            response.answer.clear()
            response.authority.clear()
            response.flags |= dns.flags.TC
            return response.to_wire()

    def _soa(self, name: dns.name.Name) -> dns.rrset.RRset:
        zone = name.parent() if len(name) > 2 else name
        return dns.rrset.from_text(
            zone,
            self.negative_ttl,
            "IN",
            "SOA",
            f"ns.{zone} hostmaster.{zone} 1 3600 600 86400 {self.negative_ttl}",
        )

    # --- lifecycle --------------------------------------------------------------------

    def start(self) -> DnsServer:
        server = self

        class Udp(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                data, sock = self.request
                reply = server.answer(data, "udp")
                if reply is not None:
                    sock.sendto(reply, self.client_address)

        class Tcp(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                self.request.settimeout(5)
                try:
                    while True:
                        size = _read_exactly(self.request, 2)
                        if size is None:
                            return
                        data = _read_exactly(self.request, int.from_bytes(size, "big"))
                        if data is None:
                            return
                        reply = server.answer(data, "tcp")
                        if reply is None:  # "timeout": say nothing until the client gives up
                            with contextlib.suppress(OSError):
                                self.request.recv(1)
                            return
                        self.request.sendall(len(reply).to_bytes(2, "big") + reply)
                except OSError:
                    return

        for _ in range(20):  # UDP and TCP on the same port number
            udp = _ThreadingUDP((LOOPBACK, 0), Udp)
            port = udp.server_address[1]
            try:
                tcp = _ThreadingTCP((LOOPBACK, port), Tcp)
            except OSError:
                udp.server_close()
                continue
            break
        else:
            raise RuntimeError("no port free for both UDP and TCP")
        self._udp, self._tcp, self.port = udp, tcp, port
        for srv in (udp, tcp):
            thread = threading.Thread(
                target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
            )
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        for srv in (self._udp, self._tcp):
            if srv is not None:
                srv.shutdown()
                srv.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads.clear()
        self._udp = self._tcp = None

    def __enter__(self) -> DnsServer:
        return self.start()

    def __exit__(self, *_exc: Any) -> None:
        self.stop()


class _ThreadingUDP(socketserver.ThreadingMixIn, socketserver.UDPServer):
    daemon_threads = True


class _ThreadingTCP(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True


def _read_exactly(sock: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data
