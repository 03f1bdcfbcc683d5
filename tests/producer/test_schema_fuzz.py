"""Fuzzing the request schema: whatever arrives, the answer is a request or a coded error, never a crash."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from producer.errors import CATALOG, InvalidRequest
from producer.schema import DanceRequest, parse_request

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)
fields = st.sampled_from([
    "reference_image", "dance_video", "prompt", "negative_prompt", "width", "height", "steps", "cfg", "seed",
    "images", "videos", "input", "extra",
])
plausible = st.dictionaries(fields, json_values | st.just("https://h.example/a.png"), max_size=9)


def check(raw: Any) -> None:
    try:
        request = parse_request(raw)
    except InvalidRequest as exc:
        assert exc.code in CATALOG and exc.message
        assert isinstance(exc.details, dict)
    else:
        assert isinstance(request, DanceRequest)
        assert request.width % 32 == 0 and request.height % 32 == 0


@settings(max_examples=400, deadline=None)
@given(json_values)
def test_any_json_value_is_a_request_or_a_coded_error(raw: Any) -> None:
    check(raw)


@settings(max_examples=400, deadline=None)
@given(plausible)
def test_objects_with_known_field_names_and_random_values_never_crash_the_parser(raw: dict[str, Any]) -> None:
    check(raw)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["reference_image", "dance_video"]), json_values, max_size=2), plausible)
def test_the_nested_shape_is_fuzzed_as_well(media: dict[str, Any], rest: dict[str, Any]) -> None:
    check({**rest, "images": {"reference_image": media.get("reference_image")},
           "videos": {"dance_video": media.get("dance_video")}})
