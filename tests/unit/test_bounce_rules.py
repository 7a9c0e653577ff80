"""The bounce rules (gateway.bounces.rules): the shipped table's decisions, a user's file
before it, and a wrong user file as one ConfigError naming the file, the line, the rule and
the problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.bounces.model import Entry
from gateway.bounces.rules import CLASSES, classify, load, parse_rules, shipped
from gateway.errors import ConfigError


def failed(status: str, diagnostic: str = "", action: str = "failed") -> Entry:
    return Entry(recipient="r@example.org", action=action, status=status, diagnostic=diagnostic)


def test_the_shipped_rules_load_with_unique_names_and_known_classes() -> None:
    rules = shipped().rules
    assert len({r.name for r in rules}) == len(rules)
    assert {r.cls for r in rules} <= set(CLASSES)
    assert rules[-2:][0].name == "default-5xx" and rules[-1].name == "default-4xx"


@pytest.mark.parametrize(
    ("entry", "cls", "rule"),
    [
        (failed("5.1.1"), "hard", "bad-mailbox"),
        (failed("5.1.10"), "hard", "bad-mailbox"),
        (failed("5.1.2"), "hard", "bad-domain"),
        (failed("5.1.6"), "hard", "mailbox-moved"),
        (failed("5.2.1"), "hard", "mailbox-disabled"),
        (failed("4.2.2"), "soft", "mailbox-full"),
        (failed("5.2.2"), "soft", "mailbox-full"),  # a 5.2.2 is soft in practice
        (
            failed("5.3.4", "552 5.3.4 Message size exceeds fixed limit"),
            "soft",
            "message-too-large",
        ),
        (failed("4.4.7"), "soft", "default-4xx"),
        (failed("4.7.1", "451 4.7.1 Greylisted"), "soft", "default-4xx"),
        (failed("4.0.0", "450 user unknown, try later"), "soft", "default-4xx"),
        (failed("5.7.1", "554 5.7.1 blocked"), "policy", "policy-block"),
        (failed("5.7.26", "550 5.7.26 DMARC policy"), "policy", "policy-block"),
        # 5.7.x is never hard, whatever the words say
        (failed("5.7.1", "550 5.7.1 user unknown"), "policy", "policy-block"),
        (
            failed("5.0.0", "554 Client host blocked using zen.spamhaus.org"),
            "policy",
            "policy-text",
        ),
        (failed("5.0.0", "550 Message rejected as spam"), "policy", "policy-text"),
        (failed("5.0.0", "550 SPF check failed"), "policy", "policy-text"),
        (
            failed("5.0.0", "550 Your IP is listed at b.barracudacentral.org"),
            "policy",
            "policy-text",
        ),
        (failed("5.0.0", "550 User not listed in Domino Directory"), "hard", "user-unknown-text"),
        # 5.4.4 is routing (DNS that may come back), not proof the domain is gone
        (failed("5.4.4", "550 5.4.4 Unable to route"), "soft", "routing"),
        (failed("5.4.6", "554 5.4.6 Routing loop detected"), "soft", "routing"),
        (failed("5.4.1", "550 5.4.1 Recipient address rejected"), "soft", "routing"),
        (failed("5.0.0", "550 No such user here"), "hard", "user-unknown-text"),
        (
            failed("5.0.0", "550 Requested action not taken: mailbox unavailable"),
            "hard",
            "mailbox-unavailable-text",
        ),
        # RFC 5321's text for any 550: with a protocol code it says nothing of the mailbox
        (
            failed("5.5.0", "550 5.5.0 Requested action not taken: mailbox unavailable"),
            "soft",
            "protocol",
        ),
        (failed("5.0.0", "550 Address does not exist"), "hard", "user-unknown-text"),
        (failed("5.0.0", "552 Mailbox full"), "soft", "quota-text"),
        (failed("5.0.0", "552 user is over quota"), "soft", "quota-text"),
        # Permanent failures that say nothing of the mailbox: soft (counted), never hard
        (failed("5.5.0", "550 5.5.0 Requested action not taken"), "soft", "protocol"),
        (failed("5.3.0", "554 5.3.0 mail system misconfigured"), "soft", "system"),
        (failed("5.6.0", "550 5.6.0 Message refused: bad header"), "soft", "content"),
        (failed("5.6.1", "554 5.6.1 Media not supported"), "soft", "content"),
        (failed("5.1.0", "550 5.1.0 Address rejected"), "soft", "default-5xx"),
        (failed("5.0.0", "550 Not a registered gateway user"), "soft", "default-5xx"),
        (failed("5.1.3", "501 5.1.3 Bad recipient address syntax"), "hard", "bad-address-syntax"),
        (failed("5.1.8", "553 5.1.8 Sender address rejected"), "policy", "sender-refused"),
        (failed("5.1.7", "550 5.1.7 Invalid sender"), "policy", "sender-refused"),
        # "user unknown" words are hard under a protocol code too
        (failed("5.5.0", "550 5.5.0 User unknown"), "hard", "user-unknown-text"),
        (failed("4.4.1", action="delayed"), "ignore", "delayed"),
        (failed("2.0.0", action="delivered"), "ignore", "delivered"),
        (failed("2.0.0", action="relayed"), "ignore", "delivered"),
        (failed("2.0.0", action="expanded"), "ignore", "delivered"),
        (failed(""), "ignore", "no-rule"),
        (
            Entry("r@x.example", kind="complaint", feedback_type="abuse"),
            "complaint",
            "complaint-abuse",
        ),
        (Entry("r@x.example", kind="complaint"), "complaint", "complaint"),
        (
            Entry("r@x.example", kind="complaint", feedback_type="not-spam"),
            "ignore",
            "arf-not-spam",
        ),
        (
            Entry("r@x.example", kind="complaint", feedback_type="auth-failure"),
            "policy",
            "arf-auth-failure",
        ),
        # an auto-reply is never a bounce, whatever a status says
        (Entry("r@x.example", status="5.1.1", kind="auto_reply"), "auto_reply", "auto-reply"),
    ],
)
def test_shipped_classification(entry: Entry, cls: str, rule: str) -> None:
    verdict = classify(entry)
    assert (verdict.cls, verdict.rule) == (cls, rule)
    assert verdict.reason


def test_a_prefix_matches_whole_components_only() -> None:
    rules = parse_rules(
        '[[rule]]\nname = "one"\nstatus = "5.1.1"\nclass = "soft"\nreason = "r"\n', "f"
    )
    assert rules[0].matches(failed("5.1.1"))
    assert not rules[0].matches(failed("5.1.10"))


USER_RULES = """
# My provider answers 5.1.1 for a full mailbox: soft, not hard.
[[rule]]
name = "acme-full"
status = "5.1.1"
text = "acme.*over"
class = "soft"
reason = "acme's 5.1.1 for a full mailbox"

[[rule]]
name = "never-policy"
status = ["5.7."]
action = "failed"
class = "ignore"
reason = "we watch blocks elsewhere"
"""


def test_the_users_rules_come_first(tmp_path: Path) -> None:
    path = tmp_path / "bounce-rules.toml"
    path.write_text(USER_RULES)
    rules = load(path)
    acme = rules.classify(failed("5.1.1", "550 5.1.1 ACME mailbox over its limit"))
    assert (acme.cls, acme.rule, acme.origin) == ("soft", "acme-full", str(path))
    other = rules.classify(failed("5.1.1", "550 5.1.1 no such user"))
    assert (other.cls, other.rule, other.origin) == ("hard", "bad-mailbox", "shipped")
    assert classify(failed("5.7.1"), rules).rule == "never-policy"
    assert rules.rules[2:] == shipped().rules


def test_no_user_file_is_the_shipped_rules() -> None:
    assert load(None) is shipped()
    assert load("") is shipped()


def _error(tmp_path: Path, text: str) -> str:
    path = tmp_path / "rules.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load(path)
    return str(caught.value).replace(str(path), "FILE")


GOOD = '[[rule]]\nname = "ok"\nstatus = "5."\nclass = "hard"\nreason = "r"\n\n'


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            GOOD + '[[rule]]\nname = "two"\nstatus = "5."\nclass = "hardest"\nreason = "r"\n',
            "bounce rules file FILE: line 7, rule 2 (two): 'class' must be one of hard, soft, "
            "policy, complaint, auto_reply, ignore; got 'hardest'",
        ),
        (
            GOOD + '[[rule]]\nname = "c"\ncolour = "red"\nstatus = "5."\nclass = "hard"\n',
            "bounce rules file FILE: line 7, rule 2 (c): unknown key 'colour'",
        ),
        (
            '[[rule]]\nname = "re"\ntext = "user (unknown"\nclass = "hard"\nreason = "r"\n',
            "bounce rules file FILE: line 1, rule 1 (re): 'text' is not a valid regular "
            "expression: missing ), unterminated subpattern at position 5",
        ),
        (
            '[[rule]]\nname = "s"\nstatus = "5.1"\nclass = "hard"\nreason = "r"\n',
            "bounce rules file FILE: line 1, rule 1 (s): status '5.1' is neither a code like "
            "5.1.1 nor a prefix like 5.1.",
        ),
        (
            '[[rule]]\nname = "a"\naction = "bounced"\nclass = "hard"\nreason = "r"\n',
            "bounce rules file FILE: line 1, rule 1 (a): action 'bounced' is not one of "
            "failed, delayed, delivered, relayed, expanded",
        ),
        (
            '[[rule]]\nname = "none"\nclass = "hard"\nreason = "r"\n',
            "bounce rules file FILE: line 1, rule 1 (none): needs at least one of 'status', "
            "'text', 'action'",
        ),
        (
            '[[rule]]\nstatus = "5."\nclass = "hard"\nreason = "r"\n',
            "bounce rules file FILE: line 1, rule 1: 'name' must be 1 to 64 letters, digits, "
            "'-', '_', '.', ':'",
        ),
        (
            '[[rule]]\nname = "r"\nstatus = "5."\nclass = "hard"\n',
            "bounce rules file FILE: line 1, rule 1 (r): 'reason' must be a non-empty string",
        ),
        (
            '[[rule]]\nname = "r"\nstatus = 5\nclass = "hard"\nreason = "r"\n',
            "bounce rules file FILE: line 1, rule 1 (r): 'status' must be a string or a list of "
            "strings",
        ),
        (GOOD + GOOD, "bounce rules file FILE: the rule name 'ok' is used twice"),
        ('[rules]\nname = "x"\n', "bounce rules file FILE: unknown key 'rules' (use [[rule]])"),
        (
            'rule = "x"\n',
            "bounce rules file FILE: 'rule' must be an array of [[rule]] tables",
        ),
    ],
)
def test_a_wrong_user_file_is_one_clear_error(tmp_path: Path, text: str, message: str) -> None:
    assert _error(tmp_path, text) == message


def test_bad_toml_names_the_file_and_where(tmp_path: Path) -> None:
    message = _error(tmp_path, '[[rule]]\nname = "x\n')
    assert message.startswith("bounce rules file FILE: not valid TOML: ")
    assert "line 2" in message  # tomllib's own words, which name the line and column


def test_an_unreadable_user_file_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=r"bounce rules file .*nope\.toml: cannot be read"):
        load(missing)
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="cannot be read"):
        load(binary)
