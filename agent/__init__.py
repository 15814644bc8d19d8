"""The vAccel host agent."""
