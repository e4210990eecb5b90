"""The HTTP face of the simulated Redfish BMCs (DSP0266 protocol, DSP0268 schemas), one WSGI app
(Flask-like, provisioner.lab.redfish_wsgi) for every BMC of a site, told apart by the address the
client connected to.

    /redfish/v1/                                  ServiceRoot (no authentication, DSP0266 §13.3.2)
    /redfish/v1/SessionService[/Sessions[/<id>]]  sessions: POST to log in (X-Auth-Token), DELETE to log out
    /redfish/v1/Systems/1                         PowerState, Boot override (PATCH), Actions/ComputerSystem.Reset
    /redfish/v1/Managers/1                        FirmwareVersion (the BMC's)
    /redfish/v1/Chassis/1
    /redfish/v1/UpdateService                     Actions/UpdateService.SimpleUpdate, MultipartHttpPushUri (upload)
    /redfish/v1/UpdateService/FirmwareInventory[/<component>]   Version, SoftwareId; `$expand=.` supported
    /redfish/v1/TaskService/Tasks/<id>, /redfish/v1/TaskService/TaskMonitors/<id>

Resources are served by provisioner.lab.redfish_app_systems (Systems, Managers, Chassis) and
provisioner.lab.redfish_app_updates (UpdateService, FirmwareInventory, TaskService); this module
has the root, the sessions, authentication and the error handlers. Every other request needs a
session token or HTTP Basic credentials (DSP0266 §13.3.4); errors are Redfish error bodies
(DSP0266 §9.6) with Base registry message ids (provisioner.lab.redfish_docs).
"""

from __future__ import annotations

import base64
import time
from typing import TYPE_CHECKING

from provisioner.lab import redfish_app_systems, redfish_app_updates
from provisioner.lab.redfish_bmc import RedfishBmc
from provisioner.lab.redfish_docs import (
    MAX_IMAGE_BYTES,
    V1,
    RedfishError,
    collection,
    json_response,
    ref,
    session_doc,
)
from provisioner.lab.redfish_wsgi import App, Response, request

if TYPE_CHECKING:
    from provisioner.lab.redfish_site import RedfishSite

OPEN_PATHS = frozenset({"/redfish", "/redfish/", V1, V1 + "/", V1 + "/odata", V1 + "/$metadata"})


def create_app(site: RedfishSite) -> App:
    app = App(max_content_length=MAX_IMAGE_BYTES)

    def bmc() -> RedfishBmc:
        found = site.by_address.get(request.environ.get("provisioner.bmc_address", ""))
        if found is None:
            raise RedfishError(404, "Base.1.8.ResourceMissingAtURI", "no BMC at this address")
        return found

    def authenticate(b: RedfishBmc) -> None:
        token = request.headers.get("X-Auth-Token")
        if token is not None:
            if token in b.sessions:
                return
            raise RedfishError(401, "Base.1.8.NoValidSession", "the session token is not valid")
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Basic "):
            try:
                user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
            except ValueError:
                user, password = "", ""
            if b.password_ok(user, password):
                return
        raise RedfishError(401, "Base.1.8.InsufficientPrivilege", "authentication required")

    @app.errorhandler(RedfishError)
    def redfish_error(e: RedfishError):
        body = {"error": {"code": e.message_id, "message": e.message,
                          "@Message.ExtendedInfo": [{"MessageId": e.message_id, "Message": e.message}]}}
        headers = {"WWW-Authenticate": 'Basic realm="redfish"'} if e.status == 401 else {}
        return json_response(body, e.status, headers)

    @app.errorhandler(404)
    def not_found(_e):
        return redfish_error(RedfishError(404, "Base.1.8.ResourceMissingAtURI", f"no resource at {request.path}"))

    @app.errorhandler(405)
    def not_allowed(_e):
        return redfish_error(RedfishError(405, "Base.1.8.OperationNotAllowed", f"{request.method} is not allowed here"))

    @app.errorhandler(413)
    def too_large(_e):
        return redfish_error(RedfishError(413, "Base.1.8.GeneralError", "the image is too large"))

    @app.before_request
    def gate():
        b = bmc()
        with site.lock:
            delay, answering = b.faults.delay_s, b.answering()
        if delay:
            time.sleep(delay)
        if not answering:  # went dark while this connection was open
            raise RedfishError(503, "Base.1.8.ServiceTemporarilyUnavailable", "the BMC is restarting")
        if request.path in OPEN_PATHS or (request.path.rstrip("/") == V1 + "/SessionService/Sessions"
                                          and request.method == "POST"):
            return None
        with site.lock:
            authenticate(b)
        return None


    # -- service root and sessions -------------------------------------------------------------------

    @app.get("/redfish")
    @app.get("/redfish/")
    def versions():
        return json_response({"v1": V1 + "/"})

    @app.get(V1)
    @app.get(V1 + "/")
    def root():
        b = bmc()
        return json_response({"@odata.id": V1 + "/", "@odata.type": "#ServiceRoot.v1_11_0.ServiceRoot",
                      "Id": "RootService", "Name": "Root Service", "RedfishVersion": "1.11.0",
                      "UUID": site.uuid(b.name), "Vendor": "provisioner lab",
                      "Systems": ref(V1 + "/Systems"), "Managers": ref(V1 + "/Managers"),
                      "Chassis": ref(V1 + "/Chassis"), "SessionService": ref(V1 + "/SessionService"),
                      "UpdateService": ref(V1 + "/UpdateService"), "Tasks": ref(V1 + "/TaskService"),
                      "Links": {"Sessions": ref(V1 + "/SessionService/Sessions")},
                      "ProtocolFeaturesSupported": {"ExpandQuery": {"ExpandAll": False, "Levels": True,
                                                                    "Links": False, "NoLinks": True,
                                                                    "MaxLevels": 1}}})

    @app.get(V1 + "/SessionService")
    def session_service():
        return json_response({"@odata.id": V1 + "/SessionService", "@odata.type": "#SessionService.v1_1_8.SessionService",
                      "Id": "SessionService", "Name": "Session Service", "ServiceEnabled": True,
                      "SessionTimeout": 1800, "Sessions": ref(V1 + "/SessionService/Sessions")})

    @app.get(V1 + "/SessionService/Sessions")
    def sessions():
        b = bmc()
        with site.lock:
            ids = sorted(set(b.sessions.values()), key=int)
        return collection(V1 + "/SessionService/Sessions", "#SessionCollection.SessionCollection",
                           "Sessions", [f"{V1}/SessionService/Sessions/{i}" for i in ids])

    @app.post(V1 + "/SessionService/Sessions")
    def login():
        b = bmc()
        if b.node.get("sessions") is False:  # a BMC without session login: clients fall back to Basic
            raise RedfishError(405, "Base.1.8.OperationNotAllowed", "this service does not create sessions")
        body = request.get_json(silent=True) or {}
        with site.lock:
            if not b.password_ok(str(body.get("UserName", "")), str(body.get("Password", ""))):
                raise RedfishError(401, "Base.1.8.NoValidSession", "user name or password refused")
            sid, token = b.login()
        path = f"{V1}/SessionService/Sessions/{sid}"
        return json_response(session_doc(path, sid, b.node["username"]), 201, {"X-Auth-Token": token, "Location": path})

    @app.get(V1 + "/SessionService/Sessions/<sid>")
    def session(sid: str):
        b = bmc()
        with site.lock:
            if sid not in b.sessions.values():
                raise RedfishError(404, "Base.1.8.ResourceMissingAtURI", f"no session {sid}")
        return json_response(session_doc(f"{V1}/SessionService/Sessions/{sid}", sid, b.node["username"]))

    @app.delete(V1 + "/SessionService/Sessions/<sid>")
    def logout(sid: str):
        b = bmc()
        with site.lock:
            if not b.logout(sid):
                raise RedfishError(404, "Base.1.8.ResourceMissingAtURI", f"no session {sid}")
        return Response(status=204)


    redfish_app_systems.register(app, site, bmc)
    redfish_app_updates.register(app, site, bmc)
    return app
