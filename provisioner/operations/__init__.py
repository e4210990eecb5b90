"""The operators' actions, one module per family, called alike by the CLI and the operator API.

    releases  build, show, gate, approve (or withdraw), promote
    rollouts  apply (or a saved plan), resume, abort, rollback; rollouts and their detail
    blocks    block, unblock (at once for the store's root), unblock request and confirm
    nodes     observe, plan, drift, compliance, status, history
    audit     verify the chain (and the signed checkpoints)

Each takes the context (spec, store, artifacts, site) with its actor, authorises through
operations/common.authorise (the matrix of policy/authz.py, the one place), and returns plain
data: result dataclasses (results.py) or the dicts the CLI's --json and the API both print.
"""
