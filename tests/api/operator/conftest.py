"""One operator API per test module, on loopback over real HTTP: a small private site (staging
s1n01, production r1n01) with its lab running, release R1 built through the API by `author1`, and
an account with an API token for each role."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from helpers import copy_spec

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "pipeline"))
from operator_api import ROLES, Api  # noqa: E402
from pipeline_site import Site, tune_spec  # noqa: E402

from provisioner.api.operator import OperatorDeps, create_operator_app  # noqa: E402
from provisioner.api.operator.server import OperatorServer  # noqa: E402
from provisioner.context import Context, Settings  # noqa: E402

NODES = {"s1n01", "r1n01"}


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    root = tmp_path_factory.mktemp("operator-api")
    spec = tune_spec(copy_spec(root / "spec"), nodes=NODES)
    data = root / "data"
    site = Site(spec, data, Context(Settings(spec_dir=spec, data_dir=data, actor="alice")))
    site.start_lab()
    deps = OperatorDeps(site.ctx, secure_cookie=False, event_poll=0.1)
    server = OperatorServer(create_operator_app(deps), "127.0.0.1", 0, threads=16).start()
    a = Api(site, server.port, deps)
    try:
        for role in ROLES:
            a.account(f"{role}1", role)
        a.account("author1", "approver")
        status, _, built = a.call("POST", "/api/v1/releases", "author1")
        assert status == 201, built
        a.r1 = built["id"]
        yield a
    finally:
        server.stop()
        deps.workers.shutdown(wait=True)
        site.stop()
