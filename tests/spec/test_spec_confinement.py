"""The spec stays inside itself: only regular files inside the spec directory are read, a refusal is one
line naming the file, and no error prints the contents of a file that is not YAML."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import pytest
from inproc import run_main

# Shaped like /etc/shadow: each line parses as a YAML key, which is how the real one leaked.
SHADOW = "root:$6$Zq0VERYSECRET$hashhashhash:20228:0:99999:7:::\ndaemon:*:20228:0:99999:7:::\n"
SECRET_WORDS = ("VERYSECRET", "daemon:*")


@pytest.fixture
def outside(tmp_path) -> Path:
    f = tmp_path / "shadow"
    f.write_text(SHADOW)
    f.chmod(0o600)
    return f


def relink(spec: Path, rel: str, target: Path | str) -> None:
    (spec / rel).unlink()
    (spec / rel).symlink_to(target)


def assert_no_secret(r) -> None:
    for word in SECRET_WORDS:
        assert word not in r.out + r.err, r.err


def test_a_template_linked_outside_the_spec_is_refused_by_validate(spec_dir, tmp_path, outside, capsys):
    relink(spec_dir, "templates/local.ipxe.j2", outside)
    r = run_main(capsys, "validate", spec=spec_dir, data=tmp_path / "data")
    assert r.code == 2
    assert f"error: templates/local.ipxe.j2: (file): resolves to {outside}, outside the spec directory" in r.err
    assert_no_secret(r)


def test_release_build_refuses_a_template_linked_outside_and_stores_nothing_of_it(spec_dir, tmp_path, outside,
                                                                                  capsys):
    import hashlib

    relink(spec_dir, "templates/local.ipxe.j2", outside)
    data = tmp_path / "data"
    r = run_main(capsys, "release", "build", spec=spec_dir, data=data)
    assert r.code == 2 and "templates/local.ipxe.j2" in r.err, r.err
    leaked = data / "artifacts" / "sha256" / hashlib.sha256(SHADOW.encode()).hexdigest()
    assert not leaked.exists()
    r = run_main(capsys, "release", "list", "--json", spec=spec_dir, data=data)
    assert r.code == 0 and r.out.strip() == "[]"


def test_the_release_builder_itself_refuses_a_template_swapped_for_a_link_after_validation(spec_dir, tmp_path,
                                                                                           outside):
    from provisioner.errors import SpecError
    from provisioner.releases.artifacts import ArtifactStore
    from provisioner.releases.build import freeze, import_artifacts
    from provisioner.spec.loader import load_spec

    rel = freeze(load_spec(spec_dir))
    relink(spec_dir, "templates/local.ipxe.j2", outside)
    with pytest.raises(SpecError, match=r"templates/local\.ipxe\.j2: \(file\): resolves to .* outside"):
        import_artifacts(spec_dir, rel, ArtifactStore(tmp_path / "store"))


def test_policy_linked_to_dev_zero_is_refused_without_reading_it(spec_dir, tmp_path, capsys):
    relink(spec_dir, "policy.yaml", "/dev/zero")
    r = run_main(capsys, "validate", spec=spec_dir, data=tmp_path / "data")
    assert r.code == 2
    assert "error: policy.yaml: (file): resolves to /dev/zero, outside the spec directory" in r.err


def test_a_device_inside_the_spec_is_refused_as_a_device(spec_dir, tmp_path, capsys):
    if os.geteuid() != 0:
        pytest.skip("mknod of a character device needs root")
    (spec_dir / "policy.yaml").unlink()
    os.mknod(spec_dir / "policy.yaml", 0o600 | 0o020000, os.makedev(1, 5))  # like /dev/zero
    r = run_main(capsys, "validate", spec=spec_dir, data=tmp_path / "data")
    assert r.code == 2
    assert "error: policy.yaml: (file): is a character device, not a regular file; expected a regular file" in r.err


class FifoWatch:
    """Tells whether anyone opened the FIFO for reading, and lets any such reader go at the end
    (a non-blocking writer open succeeds only while a reader is there), so a regression fails
    instead of hanging the suite."""

    def __init__(self, path: Path):
        self.path, self.reader_seen, self._stop = path, False, threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        while not self._stop.wait(0.05):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as e:
                if e.errno == errno.ENXIO:  # no reader
                    continue
                return
            self.reader_seen = True
            os.close(fd)

    def close(self):
        self._stop.set()
        self._t.join()


def test_a_deny_list_that_is_a_fifo_is_refused_without_opening_it(spec_dir, tmp_path, capsys):
    (spec_dir / "deny-list.yaml").unlink()
    os.mkfifo(spec_dir / "deny-list.yaml")
    watch = FifoWatch(spec_dir / "deny-list.yaml")
    try:
        r = run_main(capsys, "validate", spec=spec_dir, data=tmp_path / "data")
    finally:
        watch.close()
    assert not watch.reader_seen, "the loader opened the FIFO"
    assert r.code == 2
    assert "error: deny-list.yaml: (file): is a FIFO (named pipe), not a regular file" in r.err


def test_a_fifo_among_the_templates_is_refused_without_opening_it(spec_dir, tmp_path, capsys):
    os.mkfifo(spec_dir / "templates" / "extra.ipxe.j2")
    watch = FifoWatch(spec_dir / "templates" / "extra.ipxe.j2")
    try:
        r = run_main(capsys, "validate", spec=spec_dir, data=tmp_path / "data")
    finally:
        watch.close()
    assert not watch.reader_seen
    assert r.code == 2 and "error: templates/extra.ipxe.j2: (file): is a FIFO" in r.err


def test_an_inventory_linked_to_a_shadow_file_never_prints_its_lines(spec_dir, tmp_path, outside, capsys):
    relink(spec_dir, "inventory.yaml", outside)
    r = run_main(capsys, "validate", spec=spec_dir, data=tmp_path / "data")
    assert r.code == 2
    assert "error: inventory.yaml: (file): resolves to" in r.err
    assert_no_secret(r)


def test_a_shadow_file_copied_into_the_spec_is_one_line_that_does_not_echo_it(spec_dir, tmp_path, capsys):
    (spec_dir / "inventory.yaml").write_text(SHADOW)
    r = run_main(capsys, "validate", spec=spec_dir, data=tmp_path / "data")
    assert r.code == 2
    ours = [ln for ln in r.err_lines if ln.startswith("error: inventory.yaml")]
    assert ours == ["error: inventory.yaml: (document): none of its top-level keys is a field of this file; "
                    "expected top-level keys site, credentials, racks"], r.err
    assert_no_secret(r)


def test_a_templates_directory_linked_outside_is_refused(spec_dir, tmp_path, capsys):
    elsewhere = tmp_path / "elsewhere"
    (spec_dir / "templates").rename(elsewhere)
    (spec_dir / "templates").symlink_to(elsewhere)
    r = run_main(capsys, "validate", spec=spec_dir, data=tmp_path / "data")
    assert r.code == 2 and "error: templates: (file): resolves to" in r.err, r.err


def test_links_that_stay_inside_the_spec_are_still_followed(spec_dir, tmp_path, capsys):
    (spec_dir / "shared").mkdir()
    (spec_dir / "templates" / "local.ipxe.j2").rename(spec_dir / "shared" / "local.ipxe.j2")
    (spec_dir / "templates" / "local.ipxe.j2").symlink_to("../shared/local.ipxe.j2")
    r = run_main(capsys, "validate", spec=spec_dir, data=tmp_path / "data")
    assert r.code == 0, r.err


def test_an_artifact_that_is_a_fifo_is_refused_as_one(spec_dir, tmp_path, capsys):
    art = spec_dir / "artifacts/firmware/r650/nic-22.31.6.bin"
    art.unlink()
    os.mkfifo(art)
    watch = FifoWatch(art)
    try:
        r = run_main(capsys, "validate", spec=spec_dir, data=tmp_path / "data")
    finally:
        watch.close()
    assert not watch.reader_seen and r.code == 2
    assert "'artifacts/firmware/r650/nic-22.31.6.bin' is a FIFO (named pipe), not a regular file" in r.err


def test_a_template_that_is_not_jinja2_is_one_line_at_validate_without_its_contents(spec_dir, tmp_path, capsys):
    (spec_dir / "templates" / "local.ipxe.j2").write_text("#!ipxe\n{% if %}\nVERYSECRET {{ x }} }}\n")
    r = run_main(capsys, "validate", spec=spec_dir, data=tmp_path / "data")
    assert r.code == 2
    assert r.err_lines == ["error: templates/local.ipxe.j2:2: (template): Jinja2 syntax error: Expected an "
                           "expression, got 'end of statement block'; expected a valid Jinja2 template"], r.err
    assert_no_secret(r)


def test_a_binary_template_is_refused_at_validate(spec_dir, tmp_path, capsys):
    (spec_dir / "templates" / "local.ipxe.j2").write_bytes(bytes(range(256)))
    r = run_main(capsys, "validate", spec=spec_dir, data=tmp_path / "data")
    assert r.code == 2
    assert r.err_lines == ["error: templates/local.ipxe.j2: (file): is not UTF-8 text (byte 128); expected a UTF-8 "
                           "template"], r.err
