"""``vsock://CID:PORT`` addresses, the hybrid-vsock rule, and this machine's vsock facts."""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct
from dataclasses import dataclass

from vaccel_core.errors import InvalidArgumentError
from vaccel_core.transport import Address

#: The host's CID, what a guest dials by default (VMADDR_CID_HOST).
CID_HOST = 2
#: The local (loopback) CID (VMADDR_CID_LOCAL; needs the vsock_loopback module).
CID_LOCAL = 1
#: Bind to every CID of this machine (VMADDR_CID_ANY).
CID_ANY = 0xFFFFFFFF
#: Any free port (VMADDR_PORT_ANY).
PORT_ANY = 0xFFFFFFFF
#: The port Kata's vAccel integration uses.
KATA_VACCEL_PORT = 2048

_IOCTL_VM_SOCKETS_GET_LOCAL_CID = 0x7B9
_ANY = {"-1", "any", "*"}


@dataclass(frozen=True)
class VsockAddress:
    """A parsed ``vsock://CID:PORT``; ``cid``/``port`` may be CID_ANY/PORT_ANY."""

    cid: int
    port: int

    @classmethod
    def parse(cls, address: Address | str) -> VsockAddress:
        """``vsock://2:2048``; ``vsock://-1:2048`` or ``vsock://any:2048`` (listen on every
        CID); ``vsock://2048`` (CID 2, the host: the guest's default); port ``-1``/``any``
        picks a free port when listening."""
        text = str(address)
        parsed = address if isinstance(address, Address) else Address.parse(text)
        target = parsed.target.rstrip("/")
        cid_text, sep, port_text = target.rpartition(":")
        if not sep:
            cid_text, port_text = str(CID_HOST), target
        try:
            cid = CID_ANY if cid_text.lower() in _ANY else int(cid_text, 10)
            port = PORT_ANY if port_text.lower() in _ANY else int(port_text, 10)
        except ValueError:
            raise InvalidArgumentError(
                f"address: expected vsock://CID:PORT with decimal numbers (e.g. vsock://2:2048, "
                f"or vsock://-1:2048 to listen on every CID), got {text!r}"
            ) from None
        for name, value in (("CID", cid), ("port", port)):
            if not 0 <= value <= 0xFFFFFFFF:
                raise InvalidArgumentError(
                    f"address {text!r}: {name} must be in 0..4294967295 (or -1 for any), "
                    f"got {value}"
                )
        return cls(cid, port)

    def __str__(self) -> str:
        cid = "-1" if self.cid == CID_ANY else str(self.cid)
        port = "-1" if self.port == PORT_ANY else str(self.port)
        return f"vsock://{cid}:{port}"


def hybrid_vsock_path(uds_path: str, port: int = KATA_VACCEL_PORT) -> str:
    """The host unix socket that serves a guest's ``vsock://2:PORT`` on a hybrid-vsock VMM
    (Firecracker, Cloud Hypervisor, Dragonball): ``<uds_path>_<port>``.

    Kata's uds_path is ``<sandbox dir>/kata.hvsock``, so the host agent listens on
    ``unix://<sandbox dir>/kata.hvsock_2048``.
    """
    if not uds_path:
        raise InvalidArgumentError("hybrid_vsock_path: expected the VMM's vsock uds_path, got ''")
    if not 0 <= port <= 0xFFFFFFFF:
        raise InvalidArgumentError(f"hybrid_vsock_path: port must be in 0..4294967295, got {port}")
    return f"{uds_path}_{port}"


def hybrid_agent_address(uds_path: str, port: int = KATA_VACCEL_PORT) -> str:
    """The ``unix://`` address the host agent listens on for a hybrid-vsock VMM."""
    return f"unix://{hybrid_vsock_path(uds_path, port)}"


def local_cid() -> int | None:
    """This machine's vsock CID (from /dev/vsock), or None when there is no vsock device."""
    try:
        fd = os.open("/dev/vsock", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        raw = fcntl.ioctl(fd, _IOCTL_VM_SOCKETS_GET_LOCAL_CID, b"\0" * 4)
        return int(struct.unpack("I", raw)[0])
    except OSError:
        return None
    finally:
        os.close(fd)


def unavailable_reason() -> str | None:
    """Why vsock cannot work here (no AF_VSOCK in Python or the kernel), or None."""
    if not hasattr(socket, "AF_VSOCK"):
        return "this Python's socket module has no AF_VSOCK (needs Linux)"
    try:
        socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM).close()
    except OSError as exc:
        if exc.errno in (errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT, errno.EINVAL):
            return (
                "the kernel has no vsock support (AF_VSOCK sockets cannot be created: load "
                "vhost_vsock on a host, vmw_vsock_virtio_transport in a guest)"
            )
        return f"cannot create an AF_VSOCK socket: {exc}"
    if not os.path.exists("/dev/vsock"):
        return "no /dev/vsock device (no vsock transport loaded)"
    return None
