"""Budgets of failed logins, per client address and per account, in memory (one process).

A guess takes a token from both budgets before its password is verified; a right guess gives
them back. So failures alone spend a budget, and one that is spent refuses before any
argon2 work: a login endpoint cannot be used to burn CPU, nor to guess at speed, whether
the guesses spread over accounts (the address's budget) or over addresses (the account's).
The account's budget is the lower: a person mistyping is far below it, a spray is not.
Sign-ins that succeed have a budget of their own per account, so that someone who knows a
password cannot loop logins to burn CPU either.

The account's failure budget can be spent by anyone who knows the address: the account then
waits (at most ten minutes) whoever signs in. That is the price of refusing a spray of
guesses from many addresses; the console's `postern users` does not need to sign in.
"""

from __future__ import annotations

from gateway.security.ratelimit import RateLimiter, client_of

PER_ADDRESS = "20/10m"
PER_ACCOUNT = "10/10m"
SIGN_INS = "30/10m"  # successful ones, per account
ACCOUNT_MAX = 320  # an email's longest form: a longer one still counts, by its start


class LoginThrottle:
    def __init__(
        self, per_address: str = PER_ADDRESS, per_account: str = PER_ACCOUNT,
        sign_ins: str = SIGN_INS,
    ) -> None:  # fmt: skip
        self._addresses = RateLimiter(per_address)
        self._accounts = RateLimiter(per_account)
        self._sign_ins = RateLimiter(sign_ins)

    def admit(self, host: str, email: str) -> float:
        """0.0 when this guess may be checked (a token of each budget is taken), else the
        seconds until it could be."""
        address, account = client_of(host), _account(email)
        taken: list[tuple[RateLimiter, str]] = []
        for budget, name in (
            (self._addresses, address), (self._accounts, account), (self._sign_ins, account),
        ):  # fmt: skip
            wait = budget.take(name)
            if wait > 0:
                for earlier, earlier_name in taken:
                    earlier.give_back(earlier_name)
                return wait
            taken.append((budget, name))
        return 0.0

    def passed(self, host: str, email: str) -> None:
        """The admitted guess was right: it costs no failure (a sign-in, still)."""
        self._addresses.give_back(client_of(host))
        self._accounts.give_back(_account(email))


def _account(email: str) -> str:
    return email.strip().lower()[:ACCOUNT_MAX]
