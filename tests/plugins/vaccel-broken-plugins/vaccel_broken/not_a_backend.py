from vaccel_core import hookimpl


class Impostor:
    name = "impostor"


@hookimpl
def vaccel_register_backends(register):
    register(Impostor)
