"""The operator API tests' client: calls over loopback HTTP with a role's token."""

from __future__ import annotations

import http.client
import json
from dataclasses import dataclass, field

from provisioner.api.operator import OperatorDeps

ROLES = ("viewer", "operator", "approver", "admin")
PASSWORD = "correct horse battery"


@dataclass
class Api:
    site: object  # pipeline_site.Site
    port: int
    deps: OperatorDeps
    tokens: dict[str, str] = field(default_factory=dict)  # account name -> API token
    r1: str = ""

    def call(self, method: str, path: str, as_: str | None = None, body: dict | None = None,
             headers: dict | None = None):
        """(status, headers, JSON body or raw text) over a fresh loopback connection."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        h = dict(headers or {})
        if as_ is not None:
            h["Authorization"] = f"Bearer {self.tokens[as_]}"
        data = None
        if body is not None:
            data, h["Content-Type"] = json.dumps(body).encode(), "application/json"
        try:
            conn.request(method, path, body=data, headers=h)
            r = conn.getresponse()
            raw = r.read().decode()
            hdrs = {k.lower(): v for k, v in r.getheaders()}
            try:
                out = json.loads(raw) if raw else None
            except ValueError:
                out = raw
            return r.status, hdrs, out
        finally:
            conn.close()

    def account(self, name: str, role: str) -> str:
        """An account with a token (made on first use); its name."""
        accounts = self.site.ctx.store.accounts
        if name not in self.tokens:
            accounts.add(name, role, "test set-up", password=PASSWORD)
            self.tokens[name] = accounts.create_token(name, "tests", "test set-up")[0]
        return name
