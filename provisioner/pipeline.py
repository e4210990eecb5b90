"""The operations' former home, kept as re-exports for the tests and benchmarks that import it.

New code imports from provisioner.operations (one module per family of operator actions).
"""

from provisioner.operations.blocks import block, unblock, unblock_confirm, unblock_request  # noqa: F401
from provisioner.operations.common import (  # noqa: F401
    active_blocks,
    authorise,
    driver_options,
    endpoints,
    known_environment,
    refuse_blocked,
    release_of,
)
from provisioner.operations.nodes import (  # noqa: F401
    NOT_COMPLIANT,
    DriftItem,
    compliance,
    drift,
    observe,
    plan,
    plan_observed,
)
from provisioner.operations.releases import approve, gate, promote  # noqa: F401
from provisioner.operations.rollouts import (  # noqa: F401
    abort,
    apply,
    apply_saved,
    resume,
    rollback,
    wait_for_environment,
)
