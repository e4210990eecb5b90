"""The simulated Redfish BMC's server resources: ComputerSystem (power state, Reset, one-time boot
override by PATCH), Manager (the BMC's FirmwareVersion) and Chassis (DSP0268)."""

from __future__ import annotations

from collections.abc import Callable

from provisioner.lab.redfish_bmc import RedfishBmc
from provisioner.lab.redfish_docs import V1, RedfishError, collection, json_response, ref
from provisioner.lab.redfish_wsgi import App, Response, request

RESET_TYPES = ["On", "ForceOff", "GracefulShutdown", "ForceRestart", "GracefulRestart", "PowerCycle"]
BOOT_TARGETS = ["None", "Pxe", "Hdd", "Cd", "BiosSetup"]
BOOT_ENABLED = ["Disabled", "Once", "Continuous"]
BOOT_MODES = ["Legacy", "UEFI"]


def register(app: App, site, bmc: Callable[[], RedfishBmc]) -> None:
    @app.get(V1 + "/Systems")
    def systems():
        return collection(V1 + "/Systems", "#ComputerSystemCollection.ComputerSystemCollection",
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
                   "Links": {"Chassis": [ref(V1 + "/Chassis/1")], "ManagedBy": [ref(V1 + "/Managers/1")]},
                   "Actions": {"#ComputerSystem.Reset": {
                       "target": V1 + "/Systems/1/Actions/ComputerSystem.Reset",
                       "ResetType@Redfish.AllowableValues": RESET_TYPES}}}
        return json_response(doc)

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
        return collection(V1 + "/Managers", "#ManagerCollection.ManagerCollection", "Manager Collection",
                           [V1 + "/Managers/1"])

    @app.get(V1 + "/Managers/1")
    def manager():
        b = bmc()
        with site.lock:
            version = b.state["firmware"].get("bmc", {}).get("active", "")
        return json_response({"@odata.id": V1 + "/Managers/1", "@odata.type": "#Manager.v1_10_0.Manager", "Id": "1",
                      "Name": "Manager", "ManagerType": "BMC", "FirmwareVersion": version,
                      "UUID": site.uuid(b.name + "/bmc"), "Status": {"State": "Enabled", "Health": "OK"},
                      "Links": {"ManagerForServers": [ref(V1 + "/Systems/1")],
                                "ManagerForChassis": [ref(V1 + "/Chassis/1")]}})

    @app.get(V1 + "/Chassis")
    def chassis_collection():
        return collection(V1 + "/Chassis", "#ChassisCollection.ChassisCollection", "Chassis Collection",
                           [V1 + "/Chassis/1"])

    @app.get(V1 + "/Chassis/1")
    def chassis():
        b = bmc()
        with site.lock:
            power = "On" if b.state["power"] == "on" else "Off"
        return json_response({"@odata.id": V1 + "/Chassis/1", "@odata.type": "#Chassis.v1_14_0.Chassis", "Id": "1",
                      "Name": "Chassis", "ChassisType": "RackMount", "Model": b.model or "", "PowerState": power,
                      "Status": {"State": "Enabled", "Health": "OK"},
                      "Links": {"ComputerSystems": [ref(V1 + "/Systems/1")], "ManagedBy": [ref(V1 + "/Managers/1")]}})
