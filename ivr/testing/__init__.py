"""Test kit shipped with the package: call files, the replay harness, the benchmark driver."""
