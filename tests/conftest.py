"""Suite-wide fixtures live in tests/fixtures/, one real service per module."""

pytest_plugins = [
    "tests.fixtures.redis_server",
    "tests.fixtures.s3_server",
    "tests.fixtures.asset_storage",
    "tests.fixtures.media_server",
    "tests.fixtures.workers",
    "tests.fixtures.comfysim",
]
