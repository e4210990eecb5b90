"""HPM.1 wire format: our version mapping and PICMGFWU images (ipmitool is the outside judge elsewhere)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from provisioner.drivers import hpm1
from provisioner.lab.hpm import build_hpm_image, build_sim_payload, parse_sim_payload


@given(st.integers(0, 127), st.integers(0, 99), st.integers(0, 2**32 - 1))
def test_every_dotted_version_that_fits_round_trips_exactly(major, minor, patch):
    version = f"{major}.{minor}.{patch}"
    assert hpm1.decode_version(hpm1.encode_version(version, strict=True)) == version


def test_versions_are_encoded_as_ipmitool_shows_them():
    # ipmitool prints "%d.%02x %02X%02X%02X%02X": 2.1.5 -> "2.01 00000005", 22.31.6 -> "22.31 00000006"
    assert hpm1.encode_version("2.1.5") == bytes([2, 0x01, 0, 0, 0, 5])
    assert hpm1.encode_version("22.31.6") == bytes([22, 0x31, 0, 0, 0, 6])
    assert hpm1.decode_version(bytes([2, 0x15])) == "2.15.0"


@pytest.mark.parametrize("version", ["7.00.60", "U46-2.1", "200.1.0", "1.100.0"])
def test_versions_without_an_exact_encoding_are_refused_when_strict(version):
    with pytest.raises(hpm1.VersionError):
        hpm1.encode_version(version, strict=True)
    assert len(hpm1.encode_version(version)) == 6  # best effort otherwise


def test_an_image_round_trips_through_pack_and_parse():
    payloads = {"bmc": ("2.2.0", build_sim_payload("bmc", "2.2.0", size=5000)),
                "raid": ("52.30.1", build_sim_payload("raid", "52.30.1", size=700))}
    image = hpm1.parse_image(build_hpm_image(payloads, 0x20, 32473, 0x42))
    assert (image.header.device_id, image.header.manufacturer_id, image.header.product_id) == (0x20, 32473, 0x42)
    assert image.header.components == 0b1001 and image.prepare_mask == 0b1001
    got = {u.component_id: (hpm1.decode_version(u.version), u.description, u.data) for u in image.uploads}
    assert got == {0: ("2.2.0", "BMC 2.2.0", payloads["bmc"][1]), 3: ("52.30.1", "RAID 52.30.1", payloads["raid"][1])}


def test_a_corrupted_image_is_refused_by_its_md5_trailer():
    image = bytearray(build_hpm_image({"bios": ("1.0.0", b"x" * 100)}, 0x20, 1, 1))
    image[60] ^= 0xFF
    with pytest.raises(ValueError, match="MD5"):
        hpm1.parse_image(bytes(image))


def test_a_file_that_is_not_an_hpm_image_is_refused():
    with pytest.raises(ValueError, match="PICMGFWU"):
        hpm1.parse_image(b"MZ" + b"\0" * 100)


def test_sim_payloads_name_their_component_version_and_model():
    meta = parse_sim_payload(build_sim_payload("nic", "22.31.6", "r650", size=4096))
    assert meta == {"component": "nic", "model": "r650", "version": "22.31.6"}


def test_the_example_spec_artifacts_are_sim_payloads():
    from pathlib import Path

    artifact = Path(__file__).resolve().parents[2] / "artifacts/firmware/r650/bmc-7.10.30.bin"
    if not artifact.exists():
        pytest.skip("example artifacts not generated")
    assert parse_sim_payload(artifact.read_bytes())["version"] == "7.10.30"
