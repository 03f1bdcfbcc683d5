"""Suite-wide fixtures live in tests/fixtures/, one real service per module."""

pytest_plugins = [
    "tests.fixtures.redis_server",
]
