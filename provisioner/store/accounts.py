"""The store's accounts and personal API tokens: create, list, disable; issue, list, revoke, look up.

Every change is audited in the same transaction. Usernames are normalised here, once, on the way
in (identity.normalise_username); nothing else compares raw names.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from provisioner.auth.credentials import hash_password, new_api_token, token_digest
from provisioner.auth.identity import Account, Role, normalise_username
from provisioner.errors import NotAuthenticated, PolicyViolation
from provisioner.store import audit
from provisioner.store.db import Database
from provisioner.store.models import AccountRow, ApiTokenRow

DEFAULT_TOKEN_DAYS = 90
LAST_USED_GRAIN = timedelta(minutes=1)  # `token list`'s "last used" is this precise


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(dt: datetime | None) -> datetime | None:
    return dt.replace(tzinfo=UTC) if dt is not None and dt.tzinfo is None else dt  # SQLite: naive UTC


def to_account(row: AccountRow) -> Account:
    return Account(row.id, row.username, Role(row.role), row.disabled_at is not None)


class Accounts:
    def __init__(self, db: Database):
        self.db = db

    # -- accounts ----------------------------------------------------------------------------
    def add(self, username: str, role: Role | str, by: str, password: str | None = None,
            oidc: tuple[str, str] | None = None) -> Account:
        name, role = normalise_username(username), Role(role)
        try:
            with self.db.session() as s:
                row = AccountRow(username=name, role=str(role), created_at=_now(), created_by=str(by),
                                 password_hash=hash_password(password) if password else None,
                                 oidc_issuer=oidc[0] if oidc else None, oidc_subject=oidc[1] if oidc else None)
                s.add(row)
                s.flush()
                audit.append(s, by, "account.add", name, {"account": row.id, "role": str(role),
                                                           "password": bool(password), "oidc": bool(oidc)})
                return to_account(row)
        except IntegrityError:
            raise PolicyViolation(f"account {name!r} already exists; `provisioner user list` shows them") from None

    def get(self, username: str) -> Account | None:
        with self.db.session() as s:
            row = s.scalar(select(AccountRow).where(AccountRow.username == normalise_username(username)))
            return to_account(row) if row else None

    def by_id(self, account_id: int) -> Account | None:
        with self.db.session() as s:
            row = s.get(AccountRow, account_id)
            return to_account(row) if row else None

    def by_oidc(self, issuer: str, subject: str) -> Account | None:
        with self.db.session() as s:
            row = s.scalar(select(AccountRow).where(AccountRow.oidc_issuer == issuer,
                                                    AccountRow.oidc_subject == subject))
            return to_account(row) if row else None

    def bind_oidc(self, account_id: int, issuer: str, subject: str, by: str) -> bool:
        """Bind an SSO identity to an account on its first sign-in; False if it is bound already."""
        with self.db.session() as s:
            row = s.get(AccountRow, account_id, with_for_update=True)
            if row.oidc_subject is not None:
                return False
            row.oidc_issuer, row.oidc_subject = issuer, subject
            audit.append(s, by, "account.oidc", row.username, {"account": row.id, "issuer": issuer, "sub": subject})
        return True

    def password_hash(self, username: str) -> tuple[Account, str | None] | None:
        with self.db.session() as s:
            row = s.scalar(select(AccountRow).where(AccountRow.username == normalise_username(username)))
            return (to_account(row), row.password_hash) if row else None

    def list(self) -> list[dict]:
        with self.db.session() as s:
            return [{**to_account(r).as_dict(), "created_at": _aware(r.created_at).isoformat(),
                     "created_by": r.created_by, "password": r.password_hash is not None,
                     "oidc": r.oidc_subject is not None}
                    for r in s.scalars(select(AccountRow).order_by(AccountRow.username))]

    def disable(self, username: str, by: str, reason: str = "") -> bool:
        """Disable an account and revoke its tokens; False if it was already disabled."""
        name = normalise_username(username)
        with self.db.session() as s:
            row = s.scalar(select(AccountRow).where(AccountRow.username == name))
            if row is None:
                raise PolicyViolation(f"no account {name!r}; `provisioner user list` shows them")
            if row.disabled_at is not None:
                return False
            row.disabled_at = _now()
            for t in s.scalars(select(ApiTokenRow).where(ApiTokenRow.account_id == row.id,
                                                         ApiTokenRow.revoked_at.is_(None))):
                t.revoked_at = row.disabled_at
            audit.append(s, by, "account.disable", name, {"account": row.id, "reason": reason})
        return True

    # -- personal API tokens -----------------------------------------------------------------
    def create_token(self, username: str, name: str, by: str, days: float = DEFAULT_TOKEN_DAYS) -> tuple[str, dict]:
        """A new token for the account: (the token, shown once; its record)."""
        account = self.get(username)
        if account is None:
            raise PolicyViolation(f"no account {normalise_username(username)!r}; `provisioner user add` first")
        if account.disabled:
            raise PolicyViolation(f"account {account.username!r} is disabled")
        if not name.strip():
            raise PolicyViolation("a token needs a name (what it is for), e.g. --name ci")
        token, digest = new_api_token()
        created = _now()
        with self.db.session() as s:
            live = s.scalar(select(ApiTokenRow.id).where(ApiTokenRow.account_id == account.id, ApiTokenRow.name == name,
                                                         ApiTokenRow.revoked_at.is_(None),
                                                         ApiTokenRow.expires_at > created))
            if live is not None:
                raise PolicyViolation(f"{account.username} already has a live token named {name!r}; "
                                      f"revoke it first or pick another name")
            row = ApiTokenRow(account_id=account.id, name=name, token_sha256=digest, created_at=created,
                              expires_at=created + timedelta(days=days))
            s.add(row)
            s.flush()
            audit.append(s, by, "token.create", account.username, {"token": row.id, "name": name,
                                                                   "expires_at": row.expires_at.isoformat()})
            return token, self._token_dict(row, account.username)

    @staticmethod
    def _token_dict(row: ApiTokenRow, username: str) -> dict:
        return {"id": row.id, "account": username, "name": row.name, "created_at": _aware(row.created_at).isoformat(),
                "expires_at": _aware(row.expires_at).isoformat(),
                "revoked_at": _aware(row.revoked_at).isoformat() if row.revoked_at else None,
                "last_used_at": _aware(row.last_used_at).isoformat() if row.last_used_at else None}

    def tokens(self, username: str | None = None) -> list[dict]:
        with self.db.session() as s:
            q = select(ApiTokenRow, AccountRow.username).join(AccountRow, AccountRow.id == ApiTokenRow.account_id)
            if username:
                q = q.where(AccountRow.username == normalise_username(username))
            return [self._token_dict(t, u) for t, u in s.execute(q.order_by(ApiTokenRow.id))]

    def revoke_token(self, token_id: int, by: str) -> bool:
        with self.db.session() as s:
            row = s.get(ApiTokenRow, token_id)
            if row is None:
                raise PolicyViolation(f"no token {token_id}; `provisioner token list` shows them")
            if row.revoked_at is not None:
                return False
            row.revoked_at = _now()
            owner = s.get(AccountRow, row.account_id).username
            audit.append(s, by, "token.revoke", owner, {"token": row.id, "name": row.name})
        return True

    def account_for_token(self, token: str) -> Account:
        """The enabled account a live token belongs to; NotAuthenticated otherwise.

        A read that takes no write turn: many API clients authenticate at once without queueing
        behind each other. The token's last use is written at most once per `LAST_USED_GRAIN`."""
        at = _now()
        t, a = ApiTokenRow.__table__, AccountRow.__table__
        with self.db.read() as conn:
            row = conn.execute(
                select(t.c.id, t.c.name, t.c.revoked_at, t.c.expires_at, t.c.last_used_at,
                       a.c.id.label("account_id"), a.c.username, a.c.role, a.c.disabled_at)
                .join(a, a.c.id == t.c.account_id).where(t.c.token_sha256 == token_digest(token))).first()
        if row is None:
            raise NotAuthenticated("unknown API token; `provisioner token create` issues one")
        if row.revoked_at is not None:
            raise NotAuthenticated(f"API token {row.name!r} was revoked")
        if _aware(row.expires_at) <= at:
            raise NotAuthenticated(f"API token {row.name!r} expired at {_aware(row.expires_at):%Y-%m-%d %H:%M} UTC")
        if row.disabled_at is not None:
            raise NotAuthenticated(f"account {row.username!r} is disabled")
        if row.last_used_at is None or at - _aware(row.last_used_at) >= LAST_USED_GRAIN:
            with self.db.write() as conn:
                conn.execute(update(t).where(t.c.id == row.id).values(last_used_at=at))
        return Account(row.account_id, row.username, Role(row.role), False)
