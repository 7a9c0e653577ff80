"""Blocklists on the loopback DNS server (tests.support.dnsserver): the default lists' test
entries answered as a working list answers them, and a subject listed with a code and TXT.

    with DnsServer() as server:
        working_lists(server)                     # every default list passes verification
        list_ip(server, "192.0.2.7", "spamcop", "127.0.0.2", "see spamcop.net/bl.shtml")
"""

from __future__ import annotations

from gateway.reputation.dnsbl import entry_name, query_name
from gateway.reputation.lists import LISTS
from tests.support.dnsserver import DnsServer


def working_lists(server: DnsServer, names: tuple[str, ...] = tuple(LISTS), key: str = "") -> None:
    """Each list lists its test entry (with its first code) and not its clean one."""
    for name in names:
        blocklist = LISTS[name]
        code = next(iter(blocklist.codes))
        server.set(entry_name(blocklist.test_listed, blocklist, key), "A", code)


def list_subject(
    server: DnsServer, subject: str, name: str, code: str, text: str = "", key: str = ""
) -> str:
    """Make list `name` answer `code` (and a TXT) for `subject`; the name asked."""
    asked = query_name(subject, LISTS[name], key)
    assert asked is not None, f"{name} does not take {subject}"
    server.set(asked, "A", code)
    if text:
        server.set(asked, "TXT", f'"{text}"')
    return asked
