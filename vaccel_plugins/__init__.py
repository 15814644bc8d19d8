"""Built-in vAccel backends: noop, onnxruntime, jetson and the guest-side rpc backend."""
