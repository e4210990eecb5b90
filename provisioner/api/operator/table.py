"""The route table of the operator API: one row per route, read by the app (routes, authorisation)
and by the OpenAPI document, so neither is written by hand per route."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from provisioner.policy.authz import Action

# A route's action: fixed, or chosen from the request (promote to staging vs production, ...)
ActionOf = Action | Callable[..., Action] | None


@dataclass(frozen=True)
class Route:
    method: str
    path: str                 # a Flask rule: /api/v1/releases/<ref>
    action: ActionOf          # what the matrix is asked; None: no authentication (sign-in, liveness)
    handler: Callable
    summary: str
    status: int = 200         # the success status
    body: dict = field(default_factory=dict)      # request body: field -> (JSON type, required)
    query: dict = field(default_factory=dict)     # query parameter -> JSON type
    stream: bool = False      # text/event-stream, not JSON

    @property
    def endpoint(self) -> str:
        return f"{self.method.lower()}_{self.handler.__name__}"

    def action_for(self, request, deps) -> Action | None:
        if self.action is None or isinstance(self.action, Action):
            return self.action
        return self.action(request, deps)
