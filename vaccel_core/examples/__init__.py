"""Example programs with the names and output of upstream vAccel's examples (``classify``)."""
