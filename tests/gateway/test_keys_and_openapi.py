"""API key loading and checking, the bind rule, and the OpenAPI document against the app's route table."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.app import make_app
from gateway.auth import check_bind, load_keys
from gateway.openapi import openapi_document
from gateway.settings import GatewaySettings
from producer.errors import CONFIG_INVALID, GATEWAY_BIND_REFUSED, GATEWAY_FORBIDDEN, GATEWAY_UNAUTHORIZED, DanceError
from producer.settings import ProducerSettings

SECRET_A = "svc-a-0123456789abcdef0123"
SECRET_B = "svc-b-fedcba9876543210fedc"


def test_keys_from_a_yaml_file_and_the_environment_authenticate_with_their_queues(tmp_path: Path) -> None:
    # Given one key in a YAML file limited to two queues, and one inline key for any queue
    keys_file = tmp_path / "keys.yaml"
    keys_file.write_text(f"keys:\n  - name: a\n    key: {SECRET_A}\n    queues: [wan, dance]\n")
    ring = load_keys(keys_file, f"b={SECRET_B}")
    # When each bearer header is checked
    a = ring.authenticate(f"Bearer {SECRET_A}")
    b = ring.authenticate(f"bearer {SECRET_B}")
    # Then each is its key, a's first queue is its default, and a queue outside a's list is forbidden
    assert (a.name, b.name) == ("a", "b") and ring.names == ["a", "b"]
    assert a.queue(None, "dance") == "wan" and a.queue("dance", "x") == "dance" and b.queue(None, "dance") == "dance"
    with pytest.raises(DanceError) as forbidden:
        a.queue("other", "dance")
    assert forbidden.value.code == GATEWAY_FORBIDDEN
    # and a missing, malformed or unknown key is unauthorized
    for header in (None, "", "Basic abc", "Bearer ", f"Bearer {SECRET_A}x", SECRET_A):
        with pytest.raises(DanceError) as refused:
            ring.authenticate(header)
        assert refused.value.code == GATEWAY_UNAUTHORIZED


def test_a_short_or_malformed_key_is_a_config_error_that_never_echoes_the_secret(tmp_path: Path) -> None:
    for inline in ("a=short", "just-a-secret-without-a-name-0123", f"a={SECRET_A};a={SECRET_B}"):
        # When keys like these are loaded
        with pytest.raises(DanceError) as refused:
            load_keys(None, inline)
        # Then it is config.invalid, and the message holds no secret
        assert refused.value.code == CONFIG_INVALID
        assert all(secret not in str(refused.value) for secret in ("short", "just-a-secret", SECRET_A, SECRET_B))


def test_without_keys_only_loopback_addresses_may_be_bound() -> None:
    keyless, keyed = load_keys(None, ""), load_keys(None, f"a={SECRET_A}")
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        check_bind(host, keyless)
    for host in ("0.0.0.0", "::", "192.168.1.10", "gateway.example.com"):
        with pytest.raises(DanceError) as refused:
            check_bind(host, keyless)
        assert refused.value.code == GATEWAY_BIND_REFUSED
        check_bind(host, keyed)


def test_the_openapi_document_covers_every_route_the_app_serves(redis_db: str) -> None:
    # Given the app as `dance gateway` builds it
    app = make_app(GatewaySettings(producer=ProducerSettings(broker_url=redis_db, result_backend=redis_db)))
    served = {(route.resource.canonical, route.method.lower()) for route in app.router.routes()
              if route.resource is not None and route.method != "HEAD"}
    # When the document is built, Then each served route and method is in it, with responses
    paths = openapi_document()["paths"]
    assert len(served) >= 12
    for path, method in served:
        assert method in paths.get(path, {}), (path, method)
        assert paths[path][method]["responses"]
