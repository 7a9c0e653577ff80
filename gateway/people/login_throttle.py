"""Budgets of failed logins, per client address and per account, in memory (one process).

A guess takes a token from both budgets before its password is verified; a right guess gives
them back. So failures alone spend a budget, and one that is spent refuses before any
argon2 work: a login endpoint cannot be used to burn CPU, nor to guess at speed, whether
the guesses spread over accounts (the address's budget) or over addresses (the account's).
The account's budget is the lower: a person mistyping is far below it, a spray is not.
"""

from __future__ import annotations

from gateway.security.ratelimit import RateLimiter, client_of

PER_ADDRESS = "20/10m"
PER_ACCOUNT = "10/10m"
ACCOUNT_MAX = 320  # an email's longest form: a longer one still counts, by its start


class LoginThrottle:
    def __init__(self, per_address: str = PER_ADDRESS, per_account: str = PER_ACCOUNT) -> None:
        self._addresses = RateLimiter(per_address)
        self._accounts = RateLimiter(per_account)

    def admit(self, host: str, email: str) -> float:
        """0.0 when this guess may be checked (a token of each budget is taken), else the
        seconds until it could be."""
        address, account = client_of(host), _account(email)
        wait = self._addresses.take(address)
        if wait > 0:
            return wait
        wait = self._accounts.take(account)
        if wait > 0:
            self._addresses.give_back(address)
        return wait

    def passed(self, host: str, email: str) -> None:
        """The admitted guess was right: it costs nothing."""
        self._addresses.give_back(client_of(host))
        self._accounts.give_back(_account(email))


def _account(email: str) -> str:
    return email.strip().lower()[:ACCOUNT_MAX]
