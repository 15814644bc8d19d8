"""Transport plugins: tcp, unix, vsock and virtio-mock."""
