"""The Redfish driver's options as the spec states them: validated at load, carried to the driver."""

from __future__ import annotations

import yaml
from helpers import run_cli

from provisioner import pipeline
from provisioner.context import Context, Settings


def edit_yaml(path, change) -> None:
    doc = yaml.safe_load(path.read_text())
    change(doc)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def first_node(inv: dict, name: str) -> dict:
    return next(n for r in inv["racks"] for n in r["nodes"] if n["name"] == name)


def test_an_image_server_on_an_ipmi_bmc_is_a_one_line_spec_error(spec_dir, tmp_path):
    edit_yaml(spec_dir / "inventory.yaml",
              lambda inv: first_node(inv, "r1n01")["bmc"].update(image_server="http://10.0.0.1:8080"))
    r = run_cli("validate", spec=spec_dir, data=tmp_path / "data")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "inventory.yaml" in r.stderr and "image_server is a Redfish option" in r.stderr


def test_a_software_id_for_a_component_the_manifest_does_not_pin_is_a_spec_error(spec_dir, tmp_path):
    edit_yaml(spec_dir / "firmware_manifests" / "dl360g10.yaml",
              lambda m: m["redfish"]["software_ids"].update(gpu="NVIDIA-A100"))
    r = run_cli("validate", spec=spec_dir, data=tmp_path / "data")
    assert r.returncode == 2 and "gpu, which this manifest does not pin" in r.stderr


def test_a_redfish_bmc_without_a_port_listens_on_https(spec_dir, tmp_path):
    edit_yaml(spec_dir / "inventory.yaml", lambda inv: first_node(inv, "r2n01")["bmc"].pop("port"))
    ctx = Context(Settings(spec_dir=spec_dir, data_dir=tmp_path / "data"))
    assert ctx.spec.node("r2n01").bmc.port == 443


def test_endpoints_carry_the_ca_bundle_image_server_and_software_ids_to_the_driver(spec_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("PROVISIONER_LAB_BMC_PASSWORD", "secret")
    edit_yaml(spec_dir / "inventory.yaml",
              lambda inv: first_node(inv, "r2n01")["bmc"].update(image_server="http://10.0.0.1:8080"))
    ctx = Context(Settings(spec_dir=spec_dir, data_dir=tmp_path / "data"))
    eps = pipeline.endpoints(ctx)
    assert eps["r1n01"].options == ()  # IPMI: nothing beyond address and credentials
    options = dict(eps["r2n01"].options)
    assert "ca_bundle" not in options  # none in the spec and none published: the system store
    assert options["image_server"] == "http://10.0.0.1:8080"
    assert dict(options["software_ids"])["bios"] == "U32"

    ca = tmp_path / "data" / "secrets" / "lab.ca.pem"  # where `lab up` publishes its CA
    ca.parent.mkdir(parents=True)
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    assert dict(pipeline.endpoints(ctx)["r2n01"].options)["ca_bundle"] == str(ca)

    edit_yaml(spec_dir / "inventory.yaml", lambda inv: inv["credentials"]["lab"].update(ca_bundle="certs/bmc-ca.pem"))
    ctx = Context(Settings(spec_dir=spec_dir, data_dir=tmp_path / "data"))
    assert dict(pipeline.endpoints(ctx)["r2n01"].options)["ca_bundle"] == str(spec_dir / "certs/bmc-ca.pem")
