"""The HPM.1 upgrade steps without sockets: our state machine against the lab's HPM.1 target, and
against scripted answers for what a real BMC may say (refusals, long-duration commands, silence)."""

from __future__ import annotations

import pytest

from provisioner.drivers import hpm1
from provisioner.drivers.base import FlashJob
from provisioner.drivers.hpm_upgrade import HpmUpgrade, payload_for
from provisioner.errors import BmcBusy, BmcTimeout, BmcUnreachable, DriverError, ImageRejected
from provisioner.lab.hpm import COMPONENTS, HpmTarget, build_hpm_image, build_sim_payload

BIOS = COMPONENTS.index("bios")


class Target:
    """The lab's BMC-side HPM.1 (provisioner.lab.hpm.HpmTarget) on a hand-driven clock."""

    def __init__(self, *, model: str = "r650", max_block: int = 1024):
        self.firmware = {"bmc": {"active": "2.1.0", "pending": None}, "bios": {"active": "1.20.0", "pending": None}}
        self.later: list = []
        self.log: list[dict] = []
        self.hpm = HpmTarget(self.firmware, model=model, activation_s=5.0, max_block=max_block,
                             schedule=lambda delay, fn: self.later.append(fn), record=self.log.append,
                             changed=lambda: None)

    def answer(self, command: int, data: bytes) -> tuple[int, bytes]:
        code, body = self.hpm.handle(command, data)
        if command == hpm1.GET_UPGRADE_STATUS and self.later:  # time passes while we poll
            self.later.pop(0)()
        return code, body


def job(version: str = "1.21.0") -> FlashJob:
    return FlashJob("10.0.0.9:623", "bios", version, "0" * 64, 0, previous_version="1.20.0")


def run(upgrade: HpmUpgrade, target: Target, states: list[str] | None = None) -> list[int]:
    """Drive `upgrade` to its end against `target`, as the driver does; returns the commands sent,
    in order, and appends the job's state before each step to `states`."""
    sent, now = [], 0.0
    while not upgrade.done:
        if states is not None:
            states.append(upgrade.job.state)
        if upgrade.step == "verify":
            upgrade.verified(target.firmware["bios"]["active"])  # the driver's fresh read
            continue
        request = upgrade.request()
        now += request.wait
        sent.append(request.command)
        upgrade.answer(*target.answer(request.command, request.data), now)
    return sent


def test_every_step_in_order_installs_the_version_and_keeps_the_job_current():
    target, j, states = Target(), job(), []
    payload = build_sim_payload("bios", "1.21.0", "r650", size=2500)
    sent = run(HpmUpgrade(j, BIOS, payload, block_size=1024, poll_interval=0.1), target, states)
    assert sent[:5] == [hpm1.INITIATE_UPGRADE_ACTION, hpm1.UPLOAD_FIRMWARE_BLOCK, hpm1.UPLOAD_FIRMWARE_BLOCK,
                        hpm1.UPLOAD_FIRMWARE_BLOCK, hpm1.FINISH_FIRMWARE_UPLOAD]
    assert sent[5] == hpm1.ACTIVATE_FIRMWARE and set(sent[6:]) == {hpm1.GET_UPGRADE_STATUS}  # long-duration
    assert target.firmware["bios"] == {"active": "1.21.0", "pending": None}
    assert (j.state, j.bytes_sent, j.blocks, j.bytes_total) == ("active", 2500, 3, 2500) and j.finished_at
    assert states[0] == "uploading" and "activating" in states and states[-1] == "verifying"
    assert [e["event"] for e in target.log] == ["upload_started", "uploaded", "activated"]


def test_blocks_numbered_from_zero_shrink_until_the_bmc_takes_one_then_keep_that_size():
    target, j = Target(max_block=100), job()
    payload = build_sim_payload("bios", "1.21.0", "r650", size=1000)
    run(HpmUpgrade(j, BIOS, payload, block_size=1024), target)
    assert (j.block_size, j.blocks) == (64, 16) and target.firmware["bios"]["active"] == "1.21.0"


def test_an_hpm_image_uploads_only_the_record_of_the_component_being_flashed():
    bios = build_sim_payload("bios", "1.21.0", "r650", size=700)
    image = build_hpm_image({"bmc": ("2.2.0", build_sim_payload("bmc", "2.2.0", "r650", 500)), "bios": ("1.21.0", bios)},
                            0x20, 32473, 0x42)
    assert payload_for(image, BIOS, "k", "bios") == bios
    with pytest.raises(ImageRejected, match="no upload record for nic"):
        payload_for(image, COMPONENTS.index("nic"), "k", "nic")


def test_an_image_the_bmc_refuses_after_upload_is_image_rejected_and_nothing_changes():
    target, j = Target(), job()
    payload = build_sim_payload("bios", "1.21.0", "dl360g10", size=1500)  # another model's image
    upgrade = HpmUpgrade(j, BIOS, payload)
    with pytest.raises(ImageRejected, match="refused the bios image after upload .*validation failed"):
        run(upgrade, target)
    assert upgrade.step == "finish" and upgrade.committed
    assert target.firmware["bios"] == {"active": "1.20.0", "pending": None}
    assert target.log[-1]["event"] == "rejected"


@pytest.mark.parametrize("code, error, words", [(0xD5, BmcBusy, "another firmware operation"),
                                                (hpm1.CC_HPM_81, ImageRejected, "refused to start")])
def test_a_bmc_that_will_not_start_the_upgrade_says_why_and_nothing_is_committed(code, error, words):
    upgrade = HpmUpgrade(job(), BIOS, b"x" * 100)
    assert upgrade.request().command == hpm1.INITIATE_UPGRADE_ACTION
    with pytest.raises(error, match=words):
        upgrade.answer(code, b"", 0.0)
    assert not upgrade.committed  # retrying is safe: the BMC never began


def test_an_activation_that_reports_another_version_is_image_rejected():
    target, j = Target(), job("1.21.0")
    payload = build_sim_payload("bios", "9.9.9", "r650", size=800)  # says 9.9.9 inside
    with pytest.raises(ImageRejected, match="after activation bios reports '9.9.9', the release says '1.21.0'"):
        run(HpmUpgrade(j, BIOS, payload), target)
    assert j.state == "verifying" and j.finished_at is None


def test_a_bmc_that_stops_answering_mid_upload_is_retryable_and_says_the_old_version_still_runs():
    target, j = Target(), job()
    upgrade = HpmUpgrade(j, BIOS, build_sim_payload("bios", "1.21.0", "r650", size=5000), block_size=1000)
    for _ in range(4):  # initiate and three blocks, then the BMC loses power
        request = upgrade.request()
        upgrade.answer(*target.answer(request.command, request.data), 0.0)
    target.hpm.power_lost()
    error = upgrade.no_answer("timeout")
    assert isinstance(error, BmcUnreachable) and error.retryable
    assert str(error) == ("10.0.0.9:623: the BMC stopped answering during the upload of bios at block 3 (timeout); "
                          "1.20.0 is still active; flash again")
    assert (j.blocks, j.bytes_sent, upgrade.committed) == (3, 3000, True)
    assert target.firmware["bios"] == {"active": "1.20.0", "pending": None}
    assert target.log[-1]["event"] == "flash_aborted"


def test_a_bmc_that_drops_the_upload_after_taking_blocks_is_retryable_not_shrunk_forever():
    upgrade = HpmUpgrade(job(), BIOS, b"x" * 3000, block_size=1024)
    upgrade.answer(0, b"\0", 0.0)      # initiate
    upgrade.answer(0, b"\0", 0.0)      # block 0 taken at 1024 bytes: the size is settled
    with pytest.raises(BmcUnreachable, match="dropped the upload of bios at block 1 .*flash again"):
        upgrade.answer(0xC7, b"", 0.0)


def test_a_long_duration_command_still_in_progress_past_its_limit_is_a_timeout():
    upgrade = HpmUpgrade(job(), BIOS, b"", activation_timeout=30.0)
    upgrade.answer(0, b"\0", 0.0)                     # initiate; empty payload: straight to finish
    upgrade.answer(0, b"\0", 0.0)                     # finish
    assert upgrade.request().command == hpm1.ACTIVATE_FIRMWARE
    upgrade.answer(hpm1.CC_IN_PROGRESS, b"\0", 100.0)
    poll = upgrade.request()
    assert (poll.command, poll.wait) == (hpm1.GET_UPGRADE_STATUS, 0.1)
    upgrade.answer(0, bytes([0, hpm1.ACTIVATE_FIRMWARE, hpm1.CC_IN_PROGRESS]), 120.0)  # still going
    with pytest.raises(BmcTimeout, match="activate of bios still in progress after 30s"):
        upgrade.answer(0, bytes([0, hpm1.ACTIVATE_FIRMWARE, hpm1.CC_IN_PROGRESS]), 131.0)


def activating() -> HpmUpgrade:
    upgrade = HpmUpgrade(job(), BIOS, b"")
    upgrade.answer(0, b"\0", 0.0)                     # initiate
    upgrade.answer(0, b"\0", 0.0)                     # finish
    upgrade.answer(hpm1.CC_IN_PROGRESS, b"\0", 0.0)   # activate: in progress
    return upgrade


def test_an_activation_that_ends_with_an_error_code_is_a_driver_error_not_a_success():
    with pytest.raises(DriverError, match="activation of bios failed with code 0x83"):
        activating().answer(0, bytes([0, hpm1.ACTIVATE_FIRMWARE, 0x83]), 1.0)


def test_a_status_poll_the_bmc_refuses_is_a_driver_error():
    with pytest.raises(DriverError, match="Get Upgrade Status failed with code 0xd5 during activate of bios"):
        activating().answer(0xD5, b"", 1.0)


def test_the_machine_refuses_to_be_driven_out_of_order():
    upgrade = HpmUpgrade(job(), BIOS, b"abc")
    with pytest.raises(RuntimeError, match="nothing to verify"):
        upgrade.verified("1.21.0")
