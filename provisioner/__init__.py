"""provisioner: bare-metal provisioning as immutable infrastructure, with firmware pinning."""

__version__ = "0.1.0"
