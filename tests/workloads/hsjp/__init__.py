"""Tests of the HSJP pretext (workloads/hsjp); a package so module names do not clash with tests/workloads/pose."""
