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

Every other request needs a session token or HTTP Basic credentials (DSP0266 §13.3.4); errors are
Redfish error bodies (DSP0266 §9.6) with Base registry message ids.
"""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from provisioner.lab.redfish_bmc import RedfishBmc, Task
from provisioner.lab.redfish_wsgi import App, Response, request

if TYPE_CHECKING:
    from provisioner.lab.redfish_site import RedfishSite

V1 = "/redfish/v1"
RESET_TYPES = ["On", "ForceOff", "GracefulShutdown", "ForceRestart", "GracefulRestart", "PowerCycle"]
BOOT_TARGETS = ["None", "Pxe", "Hdd", "Cd", "BiosSetup"]
BOOT_ENABLED = ["Disabled", "Once", "Continuous"]
BOOT_MODES = ["Legacy", "UEFI"]
MAX_IMAGE_BYTES = 64 << 20


def _ref(path: str) -> dict:
    return {"@odata.id": path}


def _iso(t: float | None) -> str | None:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds") if t else None


class RedfishError(Exception):
    def __init__(self, status: int, message_id: str, message: str):
        super().__init__(message)
        self.status, self.message_id, self.message = status, message_id, message


def _json(doc: dict, status: int = 200, headers: dict | None = None) -> Response:
    r = Response(json.dumps(doc), status=status, content_type="application/json")
    r.headers["OData-Version"] = "4.0"
    for k, v in (headers or {}).items():
        r.headers[k] = v
    return r


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
        return _json(body, e.status, headers)

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
        open_paths = {"/redfish", "/redfish/", V1, V1 + "/", V1 + "/odata", V1 + "/$metadata"}
        if request.path in open_paths or (request.path.rstrip("/") == V1 + "/SessionService/Sessions"
                                          and request.method == "POST"):
            return None
        with site.lock:
            authenticate(b)
        return None

    # -- service root and sessions -------------------------------------------------------------------

    @app.get("/redfish")
    @app.get("/redfish/")
    def versions():
        return _json({"v1": V1 + "/"})

    @app.get(V1)
    @app.get(V1 + "/")
    def root():
        b = bmc()
        return _json({"@odata.id": V1 + "/", "@odata.type": "#ServiceRoot.v1_11_0.ServiceRoot",
                      "Id": "RootService", "Name": "Root Service", "RedfishVersion": "1.11.0",
                      "UUID": site.uuid(b.name), "Vendor": "provisioner lab",
                      "Systems": _ref(V1 + "/Systems"), "Managers": _ref(V1 + "/Managers"),
                      "Chassis": _ref(V1 + "/Chassis"), "SessionService": _ref(V1 + "/SessionService"),
                      "UpdateService": _ref(V1 + "/UpdateService"), "Tasks": _ref(V1 + "/TaskService"),
                      "Links": {"Sessions": _ref(V1 + "/SessionService/Sessions")},
                      "ProtocolFeaturesSupported": {"ExpandQuery": {"ExpandAll": False, "Levels": True,
                                                                    "Links": False, "NoLinks": True,
                                                                    "MaxLevels": 1}}})

    @app.get(V1 + "/SessionService")
    def session_service():
        return _json({"@odata.id": V1 + "/SessionService", "@odata.type": "#SessionService.v1_1_8.SessionService",
                      "Id": "SessionService", "Name": "Session Service", "ServiceEnabled": True,
                      "SessionTimeout": 1800, "Sessions": _ref(V1 + "/SessionService/Sessions")})

    @app.get(V1 + "/SessionService/Sessions")
    def sessions():
        b = bmc()
        with site.lock:
            ids = sorted(set(b.sessions.values()), key=int)
        return _collection(V1 + "/SessionService/Sessions", "#SessionCollection.SessionCollection",
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
        return _json(_session(path, sid, b.node["username"]), 201, {"X-Auth-Token": token, "Location": path})

    @app.get(V1 + "/SessionService/Sessions/<sid>")
    def session(sid: str):
        b = bmc()
        with site.lock:
            if sid not in b.sessions.values():
                raise RedfishError(404, "Base.1.8.ResourceMissingAtURI", f"no session {sid}")
        return _json(_session(f"{V1}/SessionService/Sessions/{sid}", sid, b.node["username"]))

    @app.delete(V1 + "/SessionService/Sessions/<sid>")
    def logout(sid: str):
        b = bmc()
        with site.lock:
            if not b.logout(sid):
                raise RedfishError(404, "Base.1.8.ResourceMissingAtURI", f"no session {sid}")
        return Response(status=204)

    # -- system, manager, chassis --------------------------------------------------------------------

    @app.get(V1 + "/Systems")
    def systems():
        return _collection(V1 + "/Systems", "#ComputerSystemCollection.ComputerSystemCollection",
                           "Computer System Collection", [V1 + "/Systems/1"])

    @app.get(V1 + "/Systems/1")
    def system():
        b = bmc()
        with site.lock:
            st = b.state
            o = st["boot_override"]
            boot = {"BootSourceOverrideEnabled": ("Continuous" if o["persistent"] else "Once") if o else "Disabled",
                    "BootSourceOverrideTarget": {"pxe": "Pxe", "disk": "Hdd", "cdrom": "Cd",
                                                 "bios": "BiosSetup"}.get(o["device"], "None") if o else "None",
                    "BootSourceOverrideMode": "UEFI" if (o or {}).get("efi", True) else "Legacy",
                    "BootSourceOverrideTarget@Redfish.AllowableValues": BOOT_TARGETS,
                    "BootSourceOverrideEnabled@Redfish.AllowableValues": BOOT_ENABLED,
                    "BootSourceOverrideMode@Redfish.AllowableValues": BOOT_MODES}
            doc = {"@odata.id": V1 + "/Systems/1", "@odata.type": "#ComputerSystem.v1_13_0.ComputerSystem",
                   "Id": "1", "Name": b.name, "SystemType": "Physical", "Model": b.model or "",
                   "UUID": site.uuid(b.name), "PowerState": "On" if st["power"] == "on" else "Off",
                   "BiosVersion": st["firmware"].get("bios", {}).get("active", ""),
                   "Status": {"State": "Enabled", "Health": "OK"}, "Boot": boot,
                   "Links": {"Chassis": [_ref(V1 + "/Chassis/1")], "ManagedBy": [_ref(V1 + "/Managers/1")]},
                   "Actions": {"#ComputerSystem.Reset": {
                       "target": V1 + "/Systems/1/Actions/ComputerSystem.Reset",
                       "ResetType@Redfish.AllowableValues": RESET_TYPES}}}
        return _json(doc)

    @app.patch(V1 + "/Systems/1")
    def patch_system():
        b = bmc()
        body = request.get_json(silent=True)
        if not isinstance(body, dict) or set(body) - {"Boot"} or not isinstance(body.get("Boot"), dict):
            raise RedfishError(400, "Base.1.8.PropertyUnknown", "only Boot can be changed here")
        boot = body["Boot"]
        for key, allowed in (("BootSourceOverrideTarget", BOOT_TARGETS), ("BootSourceOverrideEnabled", BOOT_ENABLED),
                             ("BootSourceOverrideMode", BOOT_MODES)):
            if key in boot and boot[key] not in allowed:
                raise RedfishError(400, "Base.1.8.PropertyValueNotInList",
                                   f"{boot[key]!r} is not a value of {key}; allowed: {', '.join(allowed)}")
        unknown = set(boot) - {"BootSourceOverrideTarget", "BootSourceOverrideEnabled", "BootSourceOverrideMode"}
        if unknown:
            raise RedfishError(400, "Base.1.8.PropertyUnknown", f"unknown Boot properties {sorted(unknown)}")
        with site.lock:
            b.set_boot(boot.get("BootSourceOverrideTarget"), boot.get("BootSourceOverrideEnabled"),
                       boot.get("BootSourceOverrideMode"))
        return Response(status=204)

    @app.post(V1 + "/Systems/1/Actions/ComputerSystem.Reset")
    def reset():
        b = bmc()
        kind = (request.get_json(silent=True) or {}).get("ResetType")
        with site.lock:
            if not b.reset(str(kind)):
                raise RedfishError(400, "Base.1.8.ActionParameterValueNotInList",
                                   f"ResetType {kind!r} is not one of {', '.join(RESET_TYPES)}")
        return Response(status=204)

    @app.get(V1 + "/Managers")
    def managers():
        return _collection(V1 + "/Managers", "#ManagerCollection.ManagerCollection", "Manager Collection",
                           [V1 + "/Managers/1"])

    @app.get(V1 + "/Managers/1")
    def manager():
        b = bmc()
        with site.lock:
            version = b.state["firmware"].get("bmc", {}).get("active", "")
        return _json({"@odata.id": V1 + "/Managers/1", "@odata.type": "#Manager.v1_10_0.Manager", "Id": "1",
                      "Name": "Manager", "ManagerType": "BMC", "FirmwareVersion": version,
                      "UUID": site.uuid(b.name + "/bmc"), "Status": {"State": "Enabled", "Health": "OK"},
                      "Links": {"ManagerForServers": [_ref(V1 + "/Systems/1")],
                                "ManagerForChassis": [_ref(V1 + "/Chassis/1")]}})

    @app.get(V1 + "/Chassis")
    def chassis_collection():
        return _collection(V1 + "/Chassis", "#ChassisCollection.ChassisCollection", "Chassis Collection",
                           [V1 + "/Chassis/1"])

    @app.get(V1 + "/Chassis/1")
    def chassis():
        b = bmc()
        with site.lock:
            power = "On" if b.state["power"] == "on" else "Off"
        return _json({"@odata.id": V1 + "/Chassis/1", "@odata.type": "#Chassis.v1_14_0.Chassis", "Id": "1",
                      "Name": "Chassis", "ChassisType": "RackMount", "Model": b.model or "", "PowerState": power,
                      "Status": {"State": "Enabled", "Health": "OK"},
                      "Links": {"ComputerSystems": [_ref(V1 + "/Systems/1")], "ManagedBy": [_ref(V1 + "/Managers/1")]}})

    # -- updates and tasks ---------------------------------------------------------------------------

    @app.get(V1 + "/UpdateService")
    def update_service():
        return _json({"@odata.id": V1 + "/UpdateService", "@odata.type": "#UpdateService.v1_11_0.UpdateService",
                      "Id": "UpdateService", "Name": "Update Service", "ServiceEnabled": True,
                      "Status": {"State": "Enabled", "Health": "OK"},
                      "FirmwareInventory": _ref(V1 + "/UpdateService/FirmwareInventory"),
                      "MultipartHttpPushUri": V1 + "/UpdateService/upload", "MaxImageSizeBytes": MAX_IMAGE_BYTES,
                      "Actions": {"#UpdateService.SimpleUpdate": {
                          "target": V1 + "/UpdateService/Actions/UpdateService.SimpleUpdate",
                          "TransferProtocol@Redfish.AllowableValues": ["HTTP", "HTTPS"]}}})

    @app.get(V1 + "/UpdateService/FirmwareInventory")
    def firmware_inventory():
        b = bmc()
        with site.lock:
            members = [_software(b, c) for c in b.state["firmware"]]
        if request.args.get("$expand", "").split("(")[0] not in (".", "*"):
            members = [_ref(m["@odata.id"]) for m in members]
        return _json({"@odata.id": V1 + "/UpdateService/FirmwareInventory",
                      "@odata.type": "#SoftwareInventoryCollection.SoftwareInventoryCollection",
                      "Name": "Firmware Inventory", "Members@odata.count": len(members), "Members": members})

    @app.get(V1 + "/UpdateService/FirmwareInventory/<component>")
    def firmware(component: str):
        b = bmc()
        with site.lock:
            if component not in b.state["firmware"]:
                raise RedfishError(404, "Base.1.8.ResourceMissingAtURI", f"no firmware component {component}")
            return _json(_software(b, component))

    @app.post(V1 + "/UpdateService/Actions/UpdateService.SimpleUpdate")
    def simple_update():
        b = bmc()
        body = request.get_json(silent=True) or {}
        uri = body.get("ImageURI")
        if not isinstance(uri, str) or not uri:
            raise RedfishError(400, "Base.1.8.ActionParameterMissing", "ImageURI is required")
        protocol = body.get("TransferProtocol")
        if protocol is None and "://" not in uri:
            raise RedfishError(400, "Base.1.8.ActionParameterMissing", "TransferProtocol is required for this ImageURI")
        if protocol not in (None, "HTTP", "HTTPS"):
            raise RedfishError(400, "Base.1.8.ActionParameterNotSupported", f"TransferProtocol {protocol!r} is not supported")
        if protocol and "://" not in uri:
            uri = f"{protocol.lower()}://{uri}"
        return _start(b, image_uri=uri, targets=body.get("Targets") or [], how="simple_update")

    @app.post(V1 + "/UpdateService/upload")
    def multipart_push():
        b = bmc()
        params = request.form.get("UpdateParameters")
        if params is None and "UpdateParameters" in request.files:
            params = request.files["UpdateParameters"].read().decode()
        upload = request.files.get("UpdateFile")
        if upload is None:
            raise RedfishError(400, "Base.1.8.ActionParameterMissing", "the UpdateFile part is required")
        try:
            parsed = json.loads(params) if params else {}
        except ValueError:
            raise RedfishError(400, "Base.1.8.MalformedJSON", "UpdateParameters is not JSON") from None
        return _start(b, image=upload.read(), targets=parsed.get("Targets") or [], how="multipart_push")

    def _start(b: RedfishBmc, *, targets, how: str, image_uri: str | None = None, image: bytes | None = None):
        if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
            raise RedfishError(400, "Base.1.8.ActionParameterValueFormatError", "Targets must be a list of URIs")
        with site.lock:
            if any(b.component_of(t) is None for t in targets):
                raise RedfishError(400, "Base.1.8.ActionParameterValueNotInList", f"unknown Targets {targets}")
            task = b.start_update(image_uri=image_uri, image=image, targets=targets, how=how)
            doc = _task(task)
        monitor = f"{V1}/TaskService/TaskMonitors/{task.id}"
        return _json(doc, 202, {"Location": monitor, "Retry-After": "1"})

    @app.get(V1 + "/TaskService")
    def task_service():
        return _json({"@odata.id": V1 + "/TaskService", "@odata.type": "#TaskService.v1_2_0.TaskService",
                      "Id": "TaskService", "Name": "Task Service", "ServiceEnabled": True,
                      "CompletedTaskOverWritePolicy": "Oldest", "LifeCycleEventOnTaskStateChange": False,
                      "Status": {"State": "Enabled", "Health": "OK"}, "Tasks": _ref(V1 + "/TaskService/Tasks")})

    @app.get(V1 + "/TaskService/Tasks")
    def tasks():
        b = bmc()
        with site.lock:
            ids = sorted(b.tasks, key=int)
        return _collection(V1 + "/TaskService/Tasks", "#TaskCollection.TaskCollection", "Task Collection",
                           [f"{V1}/TaskService/Tasks/{i}" for i in ids])

    @app.get(V1 + "/TaskService/Tasks/<tid>")
    def task(tid: str):
        b = bmc()
        with site.lock:
            t = b.tasks.get(tid)
            if t is None:
                raise RedfishError(404, "Base.1.8.ResourceMissingAtURI", f"no task {tid}")
            return _json(_task(t))

    @app.get(V1 + "/TaskService/TaskMonitors/<tid>")
    def task_monitor(tid: str):
        """202 while the task runs (DSP0266 §13.2.7), then the task itself."""
        b = bmc()
        with site.lock:
            t = b.tasks.get(tid)
            if t is None:
                raise RedfishError(404, "Base.1.8.ResourceMissingAtURI", f"no task {tid}")
            doc, running = _task(t), t.state in ("New", "Running")
        if running:
            return _json(doc, 202, {"Location": request.path, "Retry-After": "1"})
        return _json(doc, 200)

    return app


def _collection(path: str, odata_type: str, name: str, members: list[str]) -> Response:
    return _json({"@odata.id": path, "@odata.type": odata_type, "Name": name,
                  "Members@odata.count": len(members), "Members": [_ref(m) for m in members]})


def _session(path: str, sid: str, user: str) -> dict:
    return {"@odata.id": path, "@odata.type": "#Session.v1_5_0.Session", "Id": sid, "Name": f"Session {sid}",
            "UserName": user}


def _software(b: RedfishBmc, component: str) -> dict:
    fw = b.state["firmware"][component]
    return {"@odata.id": f"{V1}/UpdateService/FirmwareInventory/{component}",
            "@odata.type": "#SoftwareInventory.v1_4_0.SoftwareInventory", "Id": component,
            "Name": f"{component.upper()} firmware", "Version": fw["active"], "SoftwareId": b.software_id(component),
            "Updateable": True, "Status": {"State": "Enabled", "Health": "OK"}}


def _task(t: Task) -> dict:
    path = f"{V1}/TaskService/Tasks/{t.id}"
    doc = {"@odata.id": path, "@odata.type": "#Task.v1_6_0.Task", "Id": t.id, "Name": f"Update task {t.id}",
           "TaskState": t.state, "TaskStatus": t.status, "PercentComplete": t.percent,
           "StartTime": _iso(t.started), "TaskMonitor": f"{V1}/TaskService/TaskMonitors/{t.id}",
           "Messages": [{"MessageId": m, "Message": text} for m, text in t.messages]}
    if t.ended:
        doc["EndTime"] = _iso(t.ended)
    return doc
