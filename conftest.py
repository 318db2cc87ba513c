"""Root pytest configuration: the server fixtures each live in their own module."""

pytest_plugins = [
    "tests.fixtures.interrupt",
    "tests.fixtures.postgres",
    "tests.fixtures.s3",
    "tests.fixtures.cluster",
    "tests.fixtures.stack",
]
