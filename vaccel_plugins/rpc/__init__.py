"""The rpc backend: forwards sessions, resources and operations to a vAccel agent."""
