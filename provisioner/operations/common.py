"""What every operation shares: the site's BMC endpoints, blocks in force, environment checks, the matrix.

Authorisation happens here, in `authorise`, for the CLI and the API alike: the matrix
(policy/authz.decide) with the facts of the case, a refusal audited before it is raised.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable

from provisioner.auth.identity import normalise_username
from provisioner.context import Context
from provisioner.drivers import BmcEndpoint
from provisioner.errors import Forbidden, InputError, PolicyViolation, ReleaseError, UnknownEnvironment
from provisioner.netboot.gate import Blocked
from provisioner.plan import pinned_blocked
from provisioner.policy.authz import Action, Decision, Facts, Who, decide
from provisioner.releases.view import ReleaseView


def endpoints(ctx: Context) -> dict[str, BmcEndpoint]:
    out = {}
    for _, n in ctx.spec.nodes():
        user, password = ctx.secret(n.bmc.credentials)
        out[n.name] = BmcEndpoint(n.bmc.address, n.bmc.port, user, password, n.bmc.driver,
                                  options=driver_options(ctx, n))
    return out


def driver_options(ctx: Context, node) -> tuple:
    """What the spec says to a node's driver beyond address and credentials (Redfish: TLS trust,
    where the BMC fetches images, how it names firmware)."""
    if node.bmc.driver != "redfish":
        return ()
    mapping = ctx.spec.manifests[node.model].redfish
    options = {"ca_bundle": ctx.ca_bundle(node.bmc.credentials), "image_server": node.bmc.image_server,
               "software_ids": tuple(sorted(mapping.software_ids.items())) if mapping else ()}
    return tuple(sorted((k, v) for k, v in options.items() if v))


def active_blocks(ctx: Context) -> list[Blocked]:
    return [Blocked(b["component"], b["version"], b["reason"], b["model"]) for b in ctx.store.active_blocks()]


def known_environment(ctx: Context, env: str) -> str:
    """`env` if policy.yaml declares it; otherwise UnknownEnvironment naming the known ones.

    A typo must never create an environment (`promote --to prod` would point a new, empty one).
    """
    known = list(ctx.spec.policy.environments)
    if env in known:
        return env
    guess = next((k for k in known if k == env.lower() or (len(env) >= 3 and k.startswith(env.lower()))), None)
    guess = guess or next(iter(difflib.get_close_matches(env.lower(), known, n=1, cutoff=0.6)), None)
    raise UnknownEnvironment(f"unknown environment {env!r}" + (f" (did you mean {guess!r}?)" if guess else "")
                             + f"; known: {', '.join(known)}, as declared under environments: in policy.yaml")


def release_of(ctx: Context, env: str):
    rid = ctx.store.current_release_id(env)
    if rid is None:
        raise ReleaseError(f"environment {env} points at no release yet; `provisioner promote RELEASE --to {env}`")
    return ctx.store.get_release(rid)


def refuse_blocked(ctx: Context, release, verb: str) -> None:
    bad = pinned_blocked(ReleaseView.of(release), active_blocks(ctx))
    if bad:
        m, c, v, b = bad[0]
        raise PolicyViolation(f"cannot {verb} release {release.short}: it pins {m} {c} {v}, blocked ({b.reason}); "
                              f"build a release that pins another {c} version, or `provisioner unblock {c} {v}`")


def norm_name(name: str) -> str:
    try:
        return normalise_username(name)
    except InputError:
        return name


def who_of(actor) -> Who:
    """The matrix's view of an actor: an authenticated account, or the store's root (unverified name)."""
    if getattr(actor, "authenticated", False):
        return Who(actor.account.username, actor.account.role, actor.account.id)
    return Who(norm_name(getattr(actor, "name", str(actor))), None, None)


def author_of(ctx: Context, release_id: str, meta: dict) -> Who:
    return Who(norm_name(meta["author"]), None, ctx.store.release_author_account(release_id))


def authorise(ctx: Context, actor, action: Action, subject: str, facts: Facts | None = None,
              refusal: Callable[[Decision], str] | None = None) -> None:
    """Apply the matrix; a refusal is audited, then raised (Forbidden for a role, else PolicyViolation).
    `refusal` words a refusal in the terms of the case at hand."""
    who = who_of(actor)
    d = decide(action, who, facts)
    if d.allowed:
        return
    reason = refusal(d) if refusal else d.reason
    ctx.store.audit(actor, "authz.refused", subject, {"action": str(action), "reason": reason})
    raise (Forbidden if d.by_role else PolicyViolation)(reason)
