"""Parsing `HOST:PORT` binds (`[::1]:8080`, `0.0.0.0`, `:69`) for the servers' command-line options."""

from __future__ import annotations


def parse_bind(text: str, default_port: int) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host:
        return text, default_port
    return host.strip("[]"), int(port)
