"""ttrpc: the lean wire of the unix and vsock transports (containerd's ttrpc protocol).

gRPC costs a guest half a millisecond or more per call; ttrpc frames a protobuf message behind
a 10-byte header, which is what upstream vAccel's and Kata's agents speak to their guests. The
agent serves ttrpc and gRPC on the same unix and vsock sockets (told apart by a connection's
first bytes: :mod:`vaccel_transports.dual`); the rpc backend speaks ttrpc there by default.

* :mod:`.wire`: frames, envelope messages, buffered reading;
* :mod:`.server`: serving the agent's handler (and the health check) on accepted connections;
* :mod:`.client`: the channel the rpc backend uses.

Over ttrpc the connection is the client: the agent gives it its identity when it connects and
releases its sessions when it closes, so no Attach stream and no capability are needed.
"""
