"""Redfish documents and errors the simulated service answers with: @odata fields on every resource
(DSP0266 §8), error bodies with Base registry message ids (DSP0266 §9.6), and the documents more
than one of provisioner.lab.redfish_app's resources serve."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from provisioner.lab.redfish_bmc import RedfishBmc, Task
from provisioner.lab.redfish_wsgi import Response

V1 = "/redfish/v1"
MAX_IMAGE_BYTES = 64 << 20


def ref(path: str) -> dict:
    return {"@odata.id": path}


def iso(t: float | None) -> str | None:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds") if t else None


class RedfishError(Exception):
    def __init__(self, status: int, message_id: str, message: str):
        super().__init__(message)
        self.status, self.message_id, self.message = status, message_id, message


def json_response(doc: dict, status: int = 200, headers: dict | None = None) -> Response:
    r = Response(json.dumps(doc), status=status, content_type="application/json")
    r.headers["OData-Version"] = "4.0"
    for k, v in (headers or {}).items():
        r.headers[k] = v
    return r


def collection(path: str, odata_type: str, name: str, members: list[str]) -> Response:
    return json_response({"@odata.id": path, "@odata.type": odata_type, "Name": name,
                  "Members@odata.count": len(members), "Members": [ref(m) for m in members]})


def session_doc(path: str, sid: str, user: str) -> dict:
    return {"@odata.id": path, "@odata.type": "#Session.v1_5_0.Session", "Id": sid, "Name": f"Session {sid}",
            "UserName": user}


def software_doc(b: RedfishBmc, component: str) -> dict:
    fw = b.state["firmware"][component]
    return {"@odata.id": f"{V1}/UpdateService/FirmwareInventory/{component}",
            "@odata.type": "#SoftwareInventory.v1_4_0.SoftwareInventory", "Id": component,
            "Name": f"{component.upper()} firmware", "Version": fw["active"], "SoftwareId": b.software_id(component),
            "Updateable": True, "Status": {"State": "Enabled", "Health": "OK"}}


def task_doc(t: Task) -> dict:
    path = f"{V1}/TaskService/Tasks/{t.id}"
    doc = {"@odata.id": path, "@odata.type": "#Task.v1_6_0.Task", "Id": t.id, "Name": f"Update task {t.id}",
           "TaskState": t.state, "TaskStatus": t.status, "PercentComplete": t.percent,
           "StartTime": iso(t.started), "TaskMonitor": f"{V1}/TaskService/TaskMonitors/{t.id}",
           "Messages": [{"MessageId": m, "Message": text} for m, text in t.messages]}
    if t.ended:
        doc["EndTime"] = iso(t.ended)
    return doc
