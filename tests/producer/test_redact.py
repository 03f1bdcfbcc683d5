"""Secrets inside URLs: user:password and signed query strings never leave in a log, event or result."""

from __future__ import annotations

from producer.redact import redact_url, redact_urls_deep, redact_urls_in


def test_a_url_keeps_scheme_host_port_and_path_but_loses_credentials_and_query() -> None:
    url = "https://user:pa55@[2001:db8::1]:9000/bucket/job/dance_00001.mp4?X-Amz-Signature=abc&X-Amz-Credential=k"
    assert redact_url(url) == "https://[2001:db8::1]:9000/bucket/job/dance_00001.mp4"


def test_every_url_inside_a_result_repr_is_redacted_and_the_rest_is_left_alone() -> None:
    # Given the repr of a result with two presigned URLs and an s3:// URI
    text = ("{'outputs': [{'uri': 's3://b/r/j/a.mp4', 'url': 'http://127.0.0.1:8333/b/r/j/a.mp4?X-Amz-Signature=s1'}, "
            "{'url': \"https://s3.example.com/b/r/j/manifest.json?X-Amz-Signature=s2&X-Amz-Date=d\"}], 'seed': 7}")
    # Then the signatures are gone, the locations and everything else stay
    assert redact_urls_in(text) == (
        "{'outputs': [{'uri': 's3://b/r/j/a.mp4', 'url': 'http://127.0.0.1:8333/b/r/j/a.mp4'}, "
        "{'url': \"https://s3.example.com/b/r/j/manifest.json\"}], 'seed': 7}"
    )


def test_every_url_inside_nested_kwargs_is_redacted_and_other_values_are_kept() -> None:
    kwargs = {"request": {"reference_image": "https://h/a.png?sig=x", "steps": 3, "tags": ["http://u:p@h/b?t=y"]},
              "deadline_s": None, "pair": ("s3://bucket/key", "plain text")}
    assert redact_urls_deep(kwargs) == {
        "request": {"reference_image": "https://h/a.png", "steps": 3, "tags": ["http://h/b"]},
        "deadline_s": None, "pair": ("s3://bucket/key", "plain text"),
    }
