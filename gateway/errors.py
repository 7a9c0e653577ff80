"""Postern's errors as one tree: one root, and the families each door maps to its replies.

The root and the families with members in storage are defined in storage.errors (storage
imports nothing above it) and re-exported here; the families only the gateway raises are
defined here. Each leaf stays in the module that raises it, named after it in brackets.
The SMTP door answers through gateway.smtpd.replies, the HTTP door through api.answers.

    PosternError                        every error Postern raises on purpose
    ├── Refused                         what the client asked is refused; nothing was done,
    │   │                               and the text is safe to show
    │   ├── InvalidInput                a value it sent is malformed or not allowed
    │   │   ├── BuildError              (intake.message_builder) also a ValueError
    │   │   ├── AttachmentsTooLarge     (intake.attachments) over max_attachments_size
    │   │   ├── AttachmentRefused       (intake.attachments) in refuse_attachment_types
    │   │   ├── FilterError             (queue.operations) also a ValueError
    │   │   ├── BadUrl                  (webhooks.urls) also a ValueError
    │   │   ├── InvalidCursor           (storage.message_search) also a ValueError
    │   │   ├── UnknownScope            (storage.keys) also a ValueError
    │   │   ├── BadMoveTarget           (storage.pools) also a PoolError
    │   │   ├── UnknownRole             (people.roles) also a ValueError
    │   │   ├── BadUserField            (people.users) also a ValueError
    │   │   ├── WeakPassword            (people.passwords)
    │   │   └── _DuplicateKey           (api.schemas) a JSON key given twice
    │   ├── Refusal                     (intake.pipeline) the sending policy refuses it
    │   │   ├── AllSuppressed           every recipient is suppressed
    │   │   ├── UnknownAlias            alias_id names neither pool nor alias
    │   │   ├── AliasUnverified         alias_id names an alias not verified yet
    │   │   ├── NoRoute                 the pool or group asked for has no active pool
    │   │   └── NotPermitted            the API key may not send this way
    │   │       └── UnverifiedSender    the From is no verified domain or alias
    │   ├── RouteRefused                (routing) no route for the message
    │   │   ├── UnknownRoute
    │   │   ├── AliasNotVerified
    │   │   └── NoActivePool
    │   ├── HostRefused                 (security.hostguard) a host in a denied network
    │   ├── MessageFinal                (queue.operations) the message has no work left
    │   ├── MessageBusy                 (queue.operations) a worker is delivering it
    │   ├── AliasError                  (storage.aliases) AliasNotFound, AliasExists,
    │   │                               AliasInUse, LastVerifiedAlias
    │   ├── PoolError                   (storage.pools) PoolNotFound, PoolReadOnly,
    │   │                               PoolNameTaken, ConfigDefault, PoolInUse, BadMoveTarget
    │   ├── DomainExists                (storage.domains)
    │   ├── DkimKeyError                (storage.dkim_keys) DkimKeyNotFound, DkimKeyExists
    │   ├── UserError                   (storage.users) UserExists, UserNotFound, LastOwner
    │   ├── RoleRefused                 (people.roles) the actor's role forbids it; `code`
    │   └── LoginRefused                (people.users) wrong email or password, whichever
    ├── IdempotencyError                the idempotency key was seen before
    │   ├── Duplicate                   (storage.idempotency) same request: the first stands
    │   └── KeyReused                   (storage.idempotency) another request: refused
    ├── StorageError                    storage's own failures
    │   ├── StorageUnavailable          the database failed: nothing of it was done
    │   │   ├── StorageFull             ... for want of space
    │   │   └── WriterStopped           ... because the writer is not running
    │   ├── SchemaError                 (storage.db) written by a newer Postern
    │   └── BackupError                 (storage.backup)
    ├── ConfigError                     the configuration or the command line is wrong
    │   ├── StartupError                (process.startup) the service cannot start
    │   ├── BackupRefused               (process.commands.backup)
    │   └── CommandError                (process.commands.admin)
    ├── DeliveryError                   an attempt at an upstream did not go through
    │   ├── PoolUnavailable             (delivery.upstream) try the next pool, else defer
    │   ├── _StaleSession               (delivery.upstream) a reused session was closed
    │   ├── SessionClosed               (delivery.pipelining) the session broke
    │   │   ├── SessionTimeout
    │   │   └── ProtocolViolation
    │   ├── Postponed                   (delivery.workers) every ready pool is over a limit
    │   ├── HostUnresolved              (security.hostguard) nothing to connect to
    │   └── _Failed                     (delivery.probe) a pool's connection test failed
    ├── SecretError                     the secret key, or what it sealed
    │   ├── SecretKeyError              (security.secrets)
    │   └── DecryptError                (security.secrets)
    │       └── WrongKeyError
    ├── DkimError                       (dkim.errors) a key, a domain name or a message
    │   ├── KeyFormatError                that cannot be signed with
    │   ├── NotCanonicalError
    │   └── MessageFormatError
    ├── TooFewDescriptors               (process.descriptors) the open-file limit is too low
    ├── SharedTableError                (security.shared_rate) the workers' rate table is
    │                                   unusable: a worker counts its own
    └── ApiError                        (api.errors) an HTTP answer raised by a route; its
                                        own tree is drawn there

A class that was a ValueError stays one (callers catch it as such). Anything that is not a
PosternError reaching a door is a bug: the SMTP client gets 451 4.3.0, the HTTP client a
bare 500, the log the detail.
"""

from __future__ import annotations

from storage.errors import (
    IdempotencyError,
    InvalidInput,
    PosternError,
    Refused,
    StorageError,
    StorageFull,
    StorageUnavailable,
    WriterStopped,
)

__all__ = [
    "ConfigError",
    "DeliveryError",
    "IdempotencyError",
    "InvalidInput",
    "PosternError",
    "Refused",
    "SecretError",
    "StorageError",
    "StorageFull",
    "StorageUnavailable",
    "WriterStopped",
]


class ConfigError(PosternError):
    """The configuration is wrong; the message is the one line the CLI prints."""


class DeliveryError(PosternError):
    """An attempt at an upstream did not go through: the upstream, the network, or our
    own limits stood in the way."""


class SecretError(PosternError):
    """The secret key cannot be used, or what it sealed cannot be opened."""
