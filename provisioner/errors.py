"""The one exception tree of provisioner.

ProvisionerError                                                                     (HTTP 500)
  + SpecError              a spec file is wrong: file, line, field, what is wrong, what to write (exit 2, HTTP 422)
  + PolicyViolation        a blocked or unapproved version was asked for (exit 3, HTTP 409)
    - Forbidden            the authorisation matrix refuses this action to this role (exit 3, HTTP 403)
    - TokenRefused         a callback token is unknown, closed or another node's (HTTP 403)
    - ReportRefused        a node's report does not fit the boot its token was issued for (HTTP 409)
  + NotAuthenticated       no valid account behind the request: bad password or token, disabled (exit 11, HTTP 401)
  + ReleaseError           a release is unknown, or a stored release/artifact would be changed (exit 4, HTTP 404)
    - ArtifactMissing      an artifact the release names is not in the store (HTTP 404)
    - ArtifactMismatch     an artifact's bytes do not hash to its name (HTTP 410)
  + StoreError             the store is unreachable or its schema is not migrated (exit 5, HTTP 503)
  + AuditError             the audit chain is broken (exit 6, HTTP 500)
  + DriverError            a BMC operation failed; `.retryable` says whether to try again (exit 7, HTTP 502)
    - BmcUnreachable       retryable: no answer from the BMC (HTTP 504)
    - BmcBusy              retryable: the BMC is running another operation (HTTP 503)
    - BmcTimeout           retryable: the operation did not finish in time (HTTP 504)
    - BmcAuthError         fatal: credentials refused
    - Unsupported          fatal: the BMC or component cannot do this (HTTP 501)
    - ImageRejected        fatal: the image's digest differs from the release, or the BMC refused it
  + NetbootError           a boot file cannot be produced (template render error, unknown profile)
  + BadRequest             a request from the network is malformed: not a MAC, a body that is not
                           the report it claims to be (HTTP 400)
    - BodyTooLarge         a request body past its limit (HTTP 413)
    - RateLimited          a MAC asked for its boot script too often (HTTP 429)
  + RolloutHalted          a rollout stopped by its failure threshold or by a block (exit 8, HTTP 409)
  + InputError             an operator's argument is wrong: empty, unknown name, bad address (exit 2, HTTP 400)
  + UnknownEnvironment     an environment name policy.yaml does not declare (exit 1)
  + PlanOutdated           a saved plan no longer matches the release or the BMCs (exit 1)
  + IncompleteRead         some BMCs could not be read: the answer covers only part of the site (exit 10)
  + RolloutBusy            another process holds the environment's (node's, BMC's) lease: who, since when (exit 9)
    - LeaseLost            this process's lease expired and may be another's: it stops without writing

User errors print one line and exit with `exit_code`; anything else is a bug and gets a traceback.
The HTTP apps answer any of these with `http_status` and a problem+json body (RFC 9457).
"""

from __future__ import annotations


class ProvisionerError(Exception):
    exit_code = 1
    http_status = 500  # RFC 9110 §15: the status an HTTP route answers this error with


class SpecError(ProvisionerError):
    """One or more problems in a spec directory; each is one line: `file:line: field: what; expected`."""

    exit_code = 2
    http_status = 422

    def __init__(self, problems: list[SpecProblem] | SpecProblem):
        if isinstance(problems, SpecProblem):
            problems = [problems]
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class SpecProblem:
    __slots__ = ("file", "line", "field", "message", "expected")

    def __init__(self, file: str, line: int | None, field: str, message: str, expected: str = ""):
        self.file, self.line, self.field, self.message, self.expected = file, line, field, message, expected

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        tail = f"; expected {self.expected}" if self.expected else ""
        return f"{where}: {self.field}: {self.message}{tail}"

    def as_dict(self) -> dict:
        return {"file": self.file, "line": self.line, "field": self.field,
                "message": self.message, "expected": self.expected}


class PolicyViolation(ProvisionerError):
    exit_code = 3
    http_status = 409


class Forbidden(PolicyViolation):
    http_status = 403


class NotAuthenticated(ProvisionerError):
    exit_code = 11
    http_status = 401


class TokenRefused(PolicyViolation):
    http_status = 403


class ReportRefused(PolicyViolation):
    http_status = 409


class ReleaseError(ProvisionerError):
    exit_code = 4
    http_status = 404


class ArtifactMissing(ReleaseError):
    http_status = 404


class ArtifactMismatch(ReleaseError):
    http_status = 410  # RFC 9110 §15.5.11: the name stays, its bytes are gone for good


class StoreError(ProvisionerError):
    exit_code = 5
    http_status = 503


class AuditError(ProvisionerError):
    exit_code = 6


class DriverError(ProvisionerError):
    exit_code = 7
    http_status = 502
    retryable = False


class BmcUnreachable(DriverError):
    retryable = True
    http_status = 504


class BmcBusy(DriverError):
    retryable = True
    http_status = 503


class BmcTimeout(DriverError):
    retryable = True
    http_status = 504


class BmcAuthError(DriverError):
    pass


class Unsupported(DriverError):
    http_status = 501


class ImageRejected(DriverError):
    pass


class NetbootError(ProvisionerError):
    pass


class BadRequest(ProvisionerError):
    http_status = 400


class BodyTooLarge(BadRequest):
    http_status = 413


class RateLimited(BadRequest):
    http_status = 429


class RolloutHalted(ProvisionerError):
    exit_code = 8
    http_status = 409


class InputError(ProvisionerError):
    """An argument an operator gave is wrong (empty, an unknown component or model): say what to give instead."""

    exit_code = 2
    http_status = 400


class UnknownEnvironment(ProvisionerError):
    http_status = 404


class PlanOutdated(ProvisionerError):
    http_status = 409


class IncompleteRead(ProvisionerError):
    """Not raised by the read itself (the rest of the answer is still worth printing): its exit
    code is what `plan`, `drift` and `status` return when some BMC could not be read."""

    exit_code = 10


class RolloutBusy(ProvisionerError):
    exit_code = 9
    http_status = 409

    def __init__(self, message: str, holder: str = "", since: str = ""):
        super().__init__(message)
        self.holder, self.since = holder, since


class LeaseLost(RolloutBusy):
    pass
