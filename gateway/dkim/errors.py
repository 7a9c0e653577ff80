"""What DKIM key handling and signing refuse: one base class for callers that catch them all."""

from __future__ import annotations


class DkimError(Exception):
    """Base of the DKIM errors."""


class KeyFormatError(DkimError):
    """A private key that is not RSA or Ed25519 PEM, or an RSA key too small to trust."""


class NotCanonicalError(DkimError):
    """The message has bare CR/LF or NUL: make it canonical before signing."""


class MessageFormatError(DkimError):
    """The message cannot be signed: unparseable header or no From field."""
