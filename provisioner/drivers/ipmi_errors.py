"""The one place where pyghmi's failures and IPMI completion codes become our error tree.

    with map_exceptions(endpoint):          # pyghmi.exceptions.IpmiException, OSError -> DriverError
        session.raw_command(...)
    raise completion_error(endpoint, code, netfn, command)   # a non-zero completion code

What becomes what (IPMI 2.0 table 5-2 for the codes; pyghmi reports a lost BMC as code 0/0xFFFF
or a "timeout" message, and refused logins by message):

    BmcAuthError      credentials refused: RAKP "Unauthorized name", "Incorrect password", D4h
    Unsupported       C1h invalid command
    BmcBusy           C0h node busy, C3h timeout inside the BMC, "Insufficient resources"
    BmcUnreachable    no answer at all: pyghmi's retries ran out, the session died, a socket error
    DriverError       any other completion code, with pyghmi's text for it
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pyghmi.exceptions

from provisioner.drivers import pyghmi_fixes
from provisioner.drivers.base import BmcEndpoint
from provisioner.errors import BmcAuthError, BmcBusy, BmcUnreachable, DriverError, Unsupported

CC_NODE_BUSY, CC_INVALID_COMMAND, CC_TIMEOUT = 0xC0, 0xC1, 0xC3
CC_INSUFFICIENT_PRIVILEGE = 0xD4
NO_ANSWER = (0, 0xFFFF)  # how pyghmi reports a request its retries gave up on

_AUTH_WORDS = ("Incorrect password", "Unauthorized name", "Unauthorized role", "Invalid username",
               "privelege", "privilege")  # "privelege": pyghmi's own spelling in some messages


def translate(ep: BmcEndpoint, e: BaseException) -> DriverError:
    """Our error for a pyghmi exception or a socket error met while talking to `ep`."""
    key = ep.key
    if isinstance(e, DriverError):
        return e
    if isinstance(e, OSError):
        return BmcUnreachable(f"{key}: {e}")
    msg, code = str(e), getattr(e, "ipmicode", 0)
    if any(s in msg for s in _AUTH_WORDS) or code == CC_INSUFFICIENT_PRIVILEGE:
        return BmcAuthError(f"{key}: credentials refused for user {ep.username!r} ({msg})")
    if code == CC_INVALID_COMMAND:
        return Unsupported(f"{key}: the BMC does not support this command ({msg})")
    if code in (CC_NODE_BUSY, CC_TIMEOUT) or "Insufficient resources" in msg:
        return BmcBusy(f"{key}: the BMC is busy ({msg})")
    if code in NO_ANSWER or "timeout" in msg or "no longer connected" in msg:
        return BmcUnreachable(f"{key}: no answer from the BMC ({msg or 'timeout'})")
    return DriverError(f"{key}: the BMC answered completion code {code:#04x} ({msg})")


def completion_error(ep: BmcEndpoint, code: int, netfn: int, command: int) -> DriverError:
    """Our error for a request the BMC answered with completion code `code` (non-zero)."""
    text = pyghmi_fixes.completion_text(code, netfn, command) or "error"
    return translate(ep, pyghmi.exceptions.IpmiException(text, code))


def no_answer(ep: BmcEndpoint, answer: dict) -> DriverError:
    """Our error for a raw_command answer without data: pyghmi's retries ran out."""
    return translate(ep, pyghmi.exceptions.IpmiException(answer.get("error", "timeout"), answer.get("code", 0xFFFF)))


@contextlib.contextmanager
def map_exceptions(ep: BmcEndpoint) -> Iterator[None]:
    """Re-raise pyghmi's exceptions and socket errors as our DriverErrors (without the chain)."""
    try:
        yield
    except (pyghmi.exceptions.IpmiException, OSError) as e:
        raise translate(ep, e) from None
