"""The chaos run (Jepsen's method): a workload, a nemesis and a checker; see `tests.chaos.run`."""
