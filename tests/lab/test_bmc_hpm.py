"""The simulated BMC's HPM.1 target on its own: blocks, finish, timed activation, power loss."""

from __future__ import annotations

import struct

import pytest

from provisioner.drivers import hpm1
from provisioner.lab.hpm import HpmTarget, build_sim_payload

P = bytes([hpm1.PICMG_ID])


@pytest.fixture
def target():
    firmware = {"bmc": {"active": "2.1.0", "pending": None}, "bios": {"active": "1.20.0", "pending": None}}
    timers, log = [], []
    t = HpmTarget(firmware, model="r650", activation_s=0.1, max_block=64,
                  schedule=lambda delay, fn: timers.append((delay, fn)), record=log.append, changed=lambda: None)
    t.timers, t.log = timers, log
    return t


def upload(t: HpmTarget, component_id: int, payload: bytes, block: int = 64) -> int:
    assert t.handle(hpm1.INITIATE_UPGRADE_ACTION, P + bytes([1 << component_id, 2]))[0] == 0
    for n, off in enumerate(range(0, len(payload), block)):
        assert t.handle(hpm1.UPLOAD_FIRMWARE_BLOCK, P + bytes([n & 0xFF]) + payload[off:off + block])[0] == 0
    return t.handle(hpm1.FINISH_FIRMWARE_UPLOAD, P + bytes([component_id]) + struct.pack("<I", len(payload)))[0]


def test_an_uploaded_image_is_pending_until_activation_completes(target):
    assert upload(target, 1, build_sim_payload("bios", "1.21.0", "r650", 1000)) == 0
    assert target.firmware["bios"] == {"active": "1.20.0", "pending": "1.21.0"}
    assert target.handle(hpm1.ACTIVATE_FIRMWARE, P)[0] == hpm1.CC_IN_PROGRESS
    assert target.handle(hpm1.GET_UPGRADE_STATUS, P) == (0, P + bytes([hpm1.ACTIVATE_FIRMWARE, 0x80]))
    delay, finish = target.timers.pop()
    assert delay == 0.1
    finish()
    assert target.handle(hpm1.GET_UPGRADE_STATUS, P) == (0, P + bytes([hpm1.ACTIVATE_FIRMWARE, 0]))
    assert target.firmware["bios"] == {"active": "1.21.0", "pending": None}


def test_a_block_longer_than_the_bmc_takes_is_refused_with_the_length_code(target):
    target.handle(hpm1.INITIATE_UPGRADE_ACTION, P + bytes([0b10, 2]))
    assert target.handle(hpm1.UPLOAD_FIRMWARE_BLOCK, P + b"\0" + b"x" * 65)[0] == hpm1.CC_LENGTH_INVALID


def test_a_retransmitted_block_is_acknowledged_but_not_stored_twice(target):
    payload = build_sim_payload("bios", "1.21.0", "r650", 200)
    target.handle(hpm1.INITIATE_UPGRADE_ACTION, P + bytes([0b10, 2]))
    target.handle(hpm1.UPLOAD_FIRMWARE_BLOCK, P + b"\0" + payload[:64])
    assert target.handle(hpm1.UPLOAD_FIRMWARE_BLOCK, P + b"\0" + payload[:64])[0] == 0
    assert target.handle(hpm1.UPLOAD_FIRMWARE_BLOCK, P + b"\x05" + payload[64:128])[0] == 0xCC  # out of order
    assert len(target.upload.data) == 64


def test_finish_with_the_wrong_length_is_a_size_mismatch(target):
    target.handle(hpm1.INITIATE_UPGRADE_ACTION, P + bytes([0b10, 2]))
    target.handle(hpm1.UPLOAD_FIRMWARE_BLOCK, P + b"\0" + b"x" * 10)
    code, _ = target.handle(hpm1.FINISH_FIRMWARE_UPLOAD, P + b"\x01" + struct.pack("<I", 11))
    assert code == hpm1.CC_HPM_81 and target.log[-1]["event"] == "rejected"


def test_an_image_that_is_not_firmware_is_refused_at_finish(target):
    assert upload(target, 1, b"\x7fELF" + b"\0" * 300) == hpm1.CC_HPM_82
    assert target.firmware["bios"]["pending"] is None


def test_power_lost_during_upload_aborts_it_and_keeps_the_old_version(target):
    target.handle(hpm1.INITIATE_UPGRADE_ACTION, P + bytes([0b10, 2]))
    target.handle(hpm1.UPLOAD_FIRMWARE_BLOCK, P + b"\0" + b"x" * 64)
    lost = target.power_lost()
    assert lost == {"event": "flash_aborted", "reason": "power lost during upload", "components": ["bios"],
                    "bytes": 64, "blocks": 1}
    assert target.handle(hpm1.UPLOAD_FIRMWARE_BLOCK, P + b"\x01" + b"x")[0] == 0xD5
    assert target.firmware["bios"] == {"active": "1.20.0", "pending": None}


def test_activation_with_nothing_uploaded_is_refused(target):
    assert target.handle(hpm1.ACTIVATE_FIRMWARE, P)[0] == 0xD5


def test_component_properties_describe_each_component(target):
    assert target.handle(hpm1.GET_COMPONENT_PROPERTIES, P + bytes([1, hpm1.PROP_DESCRIPTION])) == (
        0, P + b"BIOS".ljust(12, b"\0"))
    assert target.handle(hpm1.GET_COMPONENT_PROPERTIES, P + bytes([1, hpm1.PROP_CURRENT_VERSION])) == (
        0, P + bytes([1, 0x20, 0, 0, 0, 0]))
    assert target.handle(hpm1.GET_COMPONENT_PROPERTIES, P + bytes([2, 0]))[0] == hpm1.CC_HPM_82  # no NIC here
