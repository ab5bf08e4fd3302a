"""The test suite (a package, so that pytest loads conftest.py as tests.conftest: the module
the test files import from, not a second copy with its own classes and RUN_ID)."""
