"""gateway.dkim.domains: the records to publish for a sender domain and how each is judged."""

from __future__ import annotations

from gateway.dkim.domains import check_dkim, check_dmarc, check_spf, records
from gateway.dkim.keys import txt_value
from gateway.dns import NoRecords, NoSuchDomain, Temporary, TxtRecords
from storage.dkim_keys import DkimKeyRecord

KEY = DkimKeyRecord("dkim_1", "example.com", "s1", "ed25519", "PUBKEY==", "active", 0.0)


def test_records_to_publish() -> None:
    dkim_record, spf, dmarc = records("example.com", KEY, "relay.example.net")
    assert (dkim_record.purpose, dkim_record.name) == ("dkim", "s1._domainkey.example.com")
    assert dkim_record.value == txt_value("ed25519", "PUBKEY==")
    assert (spf.name, spf.value) == ("example.com", "v=spf1 a:relay.example.net ~all")
    assert (dmarc.name, dmarc.value) == ("_dmarc.example.com", "v=DMARC1; p=none")
    assert [r.required for r in (dkim_record, spf, dmarc)] == [True, True, False]
    assert [r.purpose for r in records("example.com", None, "h")] == ["spf", "dmarc"]


def test_dkim_passes_only_with_this_key() -> None:
    name = "s1._domainkey.example.com"
    ok = TxtRecords(("v=DKIM1; k=ed25519; p=PUBKEY==",))
    assert check_dkim(name, ok, "PUBKEY==").passed
    spaced = TxtRecords(("v=DKIM1; k=ed25519; p=PUB KEY==",))  # split strings rejoined
    assert check_dkim(name, spaced, "PUBKEY==").passed
    assert check_dkim(name, TxtRecords(("v=DKIM1; p=OTHER",)), "PUBKEY==").status == "mismatch"
    assert check_dkim(name, NoSuchDomain(), "PUBKEY==").status == "missing"
    assert check_dkim(name, NoRecords(), "PUBKEY==").status == "missing"
    failed = check_dkim(name, Temporary("SERVFAIL"), "PUBKEY==")
    assert (failed.status, failed.detail) == ("temporary_error", "SERVFAIL")


def test_spf_needs_exactly_one_record() -> None:
    assert check_spf("d", TxtRecords(("google-site-verification=x", "v=spf1 mx -all"))).passed
    assert check_spf("d", TxtRecords(("v=spf1",))).passed
    assert check_spf("d", TxtRecords(("v=spf10 -all",))).status == "missing"
    two = check_spf("d", TxtRecords(("v=spf1 a -all", "v=spf1 mx -all")))
    assert two.status == "mismatch" and "more than one" in two.detail
    assert check_spf("d", NoRecords()).status == "missing"


def test_dmarc_is_reported_not_required() -> None:
    found = check_dmarc("_dmarc.d", TxtRecords(("v=DMARC1; p=reject",)))
    assert found.passed and not found.required
    assert check_dmarc("_dmarc.d", NoSuchDomain()).status == "missing"
