"""Identities: usernames normalised once, the four roles, an account, and the `Actor` behind every write.

An `Actor` is a `str` (the audit log's actor label, what every `by` column already stores) that
also carries how it was identified: the account id, the authentication method and the client
address. The store's writers keep taking a plain name; `audit.append` reads the extra fields when
they are there, so an authenticated write is recorded as such without changing every signature.

Direct store access has no authenticated identity: it is the installation's root, labelled
`root@HOST (local store)`, with the OS login name kept as an unverified claim. Such an actor can
never approve: `approve` on the server host authenticates an account (token or password).
"""

from __future__ import annotations

import re
import socket
import unicodedata
from dataclasses import dataclass
from enum import StrEnum

from provisioner.errors import InputError

_SPACE = re.compile(r"\s")


class Role(StrEnum):
    VIEWER = "viewer"      # reads status, plans, gates, history, audit
    OPERATOR = "operator"  # builds, promotes to staging, applies, blocks, rolls back
    APPROVER = "approver"  # an operator who may also approve releases and confirm unblocks
    ADMIN = "admin"        # everything, and manages accounts


class Method(StrEnum):
    """How an actor was identified; only the first three are authenticated."""

    PASSWORD = "password"
    TOKEN = "token"
    OIDC = "oidc"
    LOCAL_STORE = "local-store"  # direct store access on the server host: the installation's root


AUTHENTICATED = frozenset({Method.PASSWORD, Method.TOKEN, Method.OIDC})


def normalise_username(raw: str) -> str:
    """The one form a username is compared and stored in: Unicode NFKC, casefolded, no whitespace.

    `U1`, `u1 ` and `ｕ１` are all `u1`; a name that is empty, or has whitespace inside, is refused.
    """
    name = unicodedata.normalize("NFKC", raw or "").casefold().strip()
    name = unicodedata.normalize("NFKC", name)  # casefold can denormalise (e.g. 'ǰ')
    if not name:
        raise InputError("a username cannot be empty")
    if _SPACE.search(name):
        raise InputError(f"username {raw!r} contains whitespace; usernames are one word")
    return name


@dataclass(frozen=True)
class Account:
    id: int
    username: str
    role: Role
    disabled: bool = False

    def as_dict(self) -> dict:
        return {"id": self.id, "username": self.username, "role": str(self.role), "disabled": self.disabled}


class Actor(str):
    """Who performs a write: the label for the audit log, plus how it was established."""

    account: Account | None
    method: Method
    client: str | None
    claimed: str | None  # the unverified name in local mode (the OS login name)

    def __new__(cls, label: str, *, account: Account | None = None, method: Method = Method.LOCAL_STORE,
                client: str | None = None, claimed: str | None = None):
        self = super().__new__(cls, label)
        self.account, self.method, self.client, self.claimed = account, Method(method), client, claimed
        return self

    @classmethod
    def local_store(cls, claimed: str | None = None, host: str | None = None) -> Actor:
        host = host or socket.gethostname()
        return cls(f"root@{host} (local store)", method=Method.LOCAL_STORE, client=f"local:{host}",
                   claimed=claimed)

    @classmethod
    def of_account(cls, account: Account, method: Method, client: str | None = None) -> Actor:
        return cls(account.username, account=account, method=method, client=client)

    @property
    def authenticated(self) -> bool:
        return self.account is not None and self.method in AUTHENTICATED

    @property
    def name(self) -> str:
        """The person's name: the account's username, or the local claim (unverified), or the label."""
        if self.account is not None:
            return self.account.username
        return self.claimed or str(self)

    def audit_fields(self) -> dict:
        """The structured identity an audit entry carries beside the label."""
        client = self.client if self.claimed is None else f"{self.client} as {self.claimed} (unverified)"
        return {"account_id": self.account.id if self.account else None, "auth_method": str(self.method),
                "client": client[:255] if client else None}  # the column's width
