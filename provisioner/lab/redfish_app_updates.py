"""The simulated Redfish BMC's update resources: UpdateService (SimpleUpdate, multipart push),
FirmwareInventory, and the TaskService whose tasks and task monitors report an update's progress
(DSP0268 UpdateService, Task; DSP0266 §13.2.7 for the monitor)."""

from __future__ import annotations

import json
from collections.abc import Callable

from provisioner.lab.redfish_bmc import RedfishBmc
from provisioner.lab.redfish_docs import (
    MAX_IMAGE_BYTES,
    V1,
    RedfishError,
    collection,
    json_response,
    ref,
    software_doc,
    task_doc,
)
from provisioner.lab.redfish_wsgi import App, request


def register(app: App, site, bmc: Callable[[], RedfishBmc]) -> None:
    @app.get(V1 + "/UpdateService")
    def update_service():
        return json_response({"@odata.id": V1 + "/UpdateService", "@odata.type": "#UpdateService.v1_11_0.UpdateService",
                      "Id": "UpdateService", "Name": "Update Service", "ServiceEnabled": True,
                      "Status": {"State": "Enabled", "Health": "OK"},
                      "FirmwareInventory": ref(V1 + "/UpdateService/FirmwareInventory"),
                      "MultipartHttpPushUri": V1 + "/UpdateService/upload", "MaxImageSizeBytes": MAX_IMAGE_BYTES,
                      "Actions": {"#UpdateService.SimpleUpdate": {
                          "target": V1 + "/UpdateService/Actions/UpdateService.SimpleUpdate",
                          "TransferProtocol@Redfish.AllowableValues": ["HTTP", "HTTPS"]}}})

    @app.get(V1 + "/UpdateService/FirmwareInventory")
    def firmware_inventory():
        b = bmc()
        with site.lock:
            members = [software_doc(b, c) for c in b.state["firmware"]]
        if request.args.get("$expand", "").split("(")[0] not in (".", "*"):
            members = [ref(m["@odata.id"]) for m in members]
        return json_response({"@odata.id": V1 + "/UpdateService/FirmwareInventory",
                      "@odata.type": "#SoftwareInventoryCollection.SoftwareInventoryCollection",
                      "Name": "Firmware Inventory", "Members@odata.count": len(members), "Members": members})

    @app.get(V1 + "/UpdateService/FirmwareInventory/<component>")
    def firmware(component: str):
        b = bmc()
        with site.lock:
            if component not in b.state["firmware"]:
                raise RedfishError(404, "Base.1.8.ResourceMissingAtURI", f"no firmware component {component}")
            return json_response(software_doc(b, component))

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
            doc = task_doc(task)
        monitor = f"{V1}/TaskService/TaskMonitors/{task.id}"
        return json_response(doc, 202, {"Location": monitor, "Retry-After": "1"})

    @app.get(V1 + "/TaskService")
    def task_service():
        return json_response({"@odata.id": V1 + "/TaskService", "@odata.type": "#TaskService.v1_2_0.TaskService",
                      "Id": "TaskService", "Name": "Task Service", "ServiceEnabled": True,
                      "CompletedTaskOverWritePolicy": "Oldest", "LifeCycleEventOnTaskStateChange": False,
                      "Status": {"State": "Enabled", "Health": "OK"}, "Tasks": ref(V1 + "/TaskService/Tasks")})

    @app.get(V1 + "/TaskService/Tasks")
    def tasks():
        b = bmc()
        with site.lock:
            ids = sorted(b.tasks, key=int)
        return collection(V1 + "/TaskService/Tasks", "#TaskCollection.TaskCollection", "Task Collection",
                           [f"{V1}/TaskService/Tasks/{i}" for i in ids])

    @app.get(V1 + "/TaskService/Tasks/<tid>")
    def task(tid: str):
        b = bmc()
        with site.lock:
            t = b.tasks.get(tid)
            if t is None:
                raise RedfishError(404, "Base.1.8.ResourceMissingAtURI", f"no task {tid}")
            return json_response(task_doc(t))

    @app.get(V1 + "/TaskService/TaskMonitors/<tid>")
    def task_monitor(tid: str):
        """202 while the task runs (DSP0266 §13.2.7), then the task itself."""
        b = bmc()
        with site.lock:
            t = b.tasks.get(tid)
            if t is None:
                raise RedfishError(404, "Base.1.8.ResourceMissingAtURI", f"no task {tid}")
            doc, running = task_doc(t), t.state in ("New", "Running")
        if running:
            return json_response(doc, 202, {"Location": request.path, "Retry-After": "1"})
        return json_response(doc, 200)
