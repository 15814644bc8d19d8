"""Tests of issue 11: upstream vAccel's wire schema, its guests on our agent."""
