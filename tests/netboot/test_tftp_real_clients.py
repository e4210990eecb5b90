"""Clients nobody here wrote download from our server: curl, atftp and tftp-hpa's tftp."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest
from helpers import need_tool

from provisioner.netboot.tftp import TftpServer

MAC = "52-54-00-12-34-56"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tftproot")
    (root / "ipxe.efi").write_bytes(os.urandom(850_528))  # the size of Debian's ipxe.efi
    (root / "exact.bin").write_bytes(os.urandom(8192 * 3))  # ends on a block boundary at 512 and 8192
    (root / "menu.cfg").write_bytes(b"DEFAULT linux\r\nLABEL linux\n  KERNEL vmlinuz\n")
    return root


def per_mac(name: str, client: tuple[str, int]) -> bytes | None:
    if name == f"pxelinux.cfg/01-{MAC}":
        return b"DEFAULT install\nLABEL install\n  KERNEL http://10.0.0.1/vmlinuz\n"
    return None


@pytest.fixture(scope="module")
def server(root: Path):
    with TftpServer(root, per_mac, port=0) as s:
        yield s


def run(cmd: list[str], cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, input=stdin, capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("blksize", [512, 1468, 8192])
@pytest.mark.parametrize("name", ["ipxe.efi", "exact.bin"])
def test_curl_downloads_intact(server, root, tmp_path, blksize, name):
    need_tool("curl")
    out = tmp_path / "out"
    proc = run(["curl", "-sS", "--tftp-blksize", str(blksize), "-o", str(out),
                f"tftp://127.0.0.1:{server.port}/{name}"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert sha(out) == sha(root / name)


@pytest.mark.parametrize("options", [["blksize 512"], ["blksize 1468"], ["blksize 8192"],
                                     ["blksize 1468", "tsize enable", "windowsize 4"]])
def test_atftp_downloads_intact(server, root, tmp_path, options):
    need_tool("atftp")
    out = tmp_path / "out"
    flags = [arg for opt in options for arg in ("--option", opt)]
    proc = run(["atftp", *flags, "-g", "-r", "ipxe.efi", "-l", str(out), "127.0.0.1", str(server.port)],
               tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert sha(out) == sha(root / "ipxe.efi")


@pytest.mark.parametrize("name", ["ipxe.efi", "exact.bin"])
def test_tftp_hpa_downloads_intact_in_binary_mode(server, root, tmp_path, name):
    # tftp-hpa's client speaks plain RFC 1350 only: no options, so 512-byte blocks.
    need_tool("tftp")
    proc = run(["tftp", "127.0.0.1", str(server.port), "-m", "binary", "-c", "get", name, "out"], tmp_path)
    assert proc.returncode == 0 and "Error" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    assert sha(tmp_path / "out") == sha(root / name)


def test_tftp_hpa_gets_the_same_text_back_in_netascii_mode(server, root, tmp_path):
    need_tool("tftp")
    proc = run(["tftp", "127.0.0.1", str(server.port), "-m", "netascii", "-c", "get", "menu.cfg", "out"],
               tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "out").read_bytes() == (root / "menu.cfg").read_bytes()


def test_curl_gets_a_per_mac_config_rendered_by_the_resolver(server, tmp_path):
    need_tool("curl")
    proc = run(["curl", "-sS", f"tftp://127.0.0.1:{server.port}/pxelinux.cfg/01-{MAC}"], tmp_path)
    assert proc.returncode == 0 and proc.stdout.startswith("DEFAULT install"), proc.stderr


def test_real_clients_report_our_errors(server, tmp_path):
    need_tool("curl", "atftp", "tftp")
    curl = run(["curl", "-sS", "-o", "x", f"tftp://127.0.0.1:{server.port}/missing.cfg"], tmp_path)
    assert curl.returncode == 68, curl.stderr  # CURLE_TFTP_NOTFOUND: it read our error code 1
    curl = run(["curl", "-sS", "--path-as-is", "-o", "x", f"tftp://127.0.0.1:{server.port}/../etc/passwd"],
               tmp_path)
    assert curl.returncode == 69, curl.stderr  # CURLE_TFTP_PERM: error code 2
    atftp = run(["atftp", "-g", "-r", "missing.cfg", "-l", "x", "127.0.0.1", str(server.port)], tmp_path)
    assert atftp.returncode != 0 and "not found" in (atftp.stdout + atftp.stderr).lower()
    upload = tmp_path / "up.bin"
    upload.write_bytes(b"not welcome")
    put = run(["atftp", "-p", "-l", str(upload), "-r", "up.bin", "127.0.0.1", str(server.port)], tmp_path)
    assert put.returncode != 0 and "access violation" in (put.stdout + put.stderr).lower()
    hpa = run(["tftp", "127.0.0.1", str(server.port), "-m", "binary", "-c", "get", "missing.cfg", "x"], tmp_path)
    assert "not found" in (hpa.stdout + hpa.stderr).lower()
