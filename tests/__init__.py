"""This project's tests. A package, so that worker processes import project-only targets by name
(``"tests.support.fault_targets:dispatch"``); ``tests/conftest.py`` puts the repo root on their path."""
