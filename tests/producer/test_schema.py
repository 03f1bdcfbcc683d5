"""The request schema: both accepted shapes, typed values, and one stable code per kind of mistake."""

from __future__ import annotations

from typing import Any

import pytest

from producer import errors
from producer.batch import check_batch_id
from producer.schema import (
    DEFAULT_NEGATIVE_PROMPT,
    MAX_PROMPT_CHARS,
    DanceRequest,
    check_job_id,
    check_queue,
    parse_request,
)

IMAGE = "https://media.example.com/character.png"
VIDEO = "https://media.example.com/dance.mp4"


def flat(**overrides: Any) -> dict[str, Any]:
    return {"reference_image": IMAGE, "dance_video": VIDEO, "prompt": "a person dancing", **overrides}


def test_the_original_endpoint_body_is_accepted_unchanged() -> None:
    # Given the body the serverless endpoint took
    body = {
        "images": {"reference_image": IMAGE}, "videos": {"dance_video": VIDEO},
        "prompt": "dance", "negative_prompt": "blurry", "width": 512, "height": 896, "steps": 6,
        "cfg": 1.0, "seed": -1,
    }
    # When it is parsed
    request = parse_request(body)
    # Then it equals the flat shape with the same values
    assert request == parse_request({**flat(prompt="dance"), "negative_prompt": "blurry"})
    assert (request.width, request.height, request.steps, request.cfg, request.seed) == (512, 896, 6, 1.0, -1)


def test_the_serverless_input_envelope_is_unwrapped() -> None:
    assert parse_request({"input": flat()}) == parse_request(flat())


def test_defaults_fill_what_the_request_leaves_out() -> None:
    request = parse_request(flat())
    assert request.negative_prompt == DEFAULT_NEGATIVE_PROMPT
    assert (request.width, request.height, request.steps, request.cfg, request.seed) == (512, 896, 6, 1.0, -1)


def test_sizes_that_are_not_multiples_of_32_are_rounded_down_and_the_rounding_is_reported() -> None:
    request = parse_request(flat(width=500, height=900))
    assert (request.width, request.height) == (480, 896)
    assert request.notes == (
        "width 500 rounded down to 480 (a multiple of 32)", "height 900 rounded down to 896 (a multiple of 32)",
    )


def test_integral_floats_are_accepted_for_integer_fields() -> None:
    assert parse_request(flat(steps=8.0)).steps == 8


def test_a_random_seed_is_derived_from_the_job_id_so_a_redelivery_binds_the_same_prompt() -> None:
    request = parse_request(flat())
    assert request.resolved_seed("job-a") == request.resolved_seed("job-a")
    assert request.resolved_seed("job-a") != request.resolved_seed("job-b")
    assert parse_request(flat(seed=42)).resolved_seed("job-a") == 42


def test_a_prompt_with_quotes_newlines_unicode_and_placeholders_survives_parsing() -> None:
    text = 'she said "go"\nand {{seed}} — 跳舞 \\ done'
    assert parse_request(flat(prompt=text)).prompt == text


def test_the_payload_round_trips_through_the_parser() -> None:
    request = parse_request(flat(width=640, seed=7))
    assert parse_request(request.to_payload()) == request
    assert isinstance(request, DanceRequest)


BAD_REQUESTS: list[tuple[str, object, str]] = [
    ("not an object", ["a"], errors.REQUEST_NOT_OBJECT),
    ("a string body", "hello", errors.REQUEST_NOT_OBJECT),
    ("missing reference_image", {"dance_video": VIDEO, "prompt": "p"}, errors.REQUEST_MISSING_FIELD),
    ("missing dance_video", {"reference_image": IMAGE, "prompt": "p"}, errors.REQUEST_MISSING_FIELD),
    ("missing prompt", {"reference_image": IMAGE, "dance_video": VIDEO}, errors.REQUEST_MISSING_FIELD),
    ("width as a string", flat(width="512"), errors.REQUEST_WRONG_TYPE),
    ("steps as a boolean", flat(steps=True), errors.REQUEST_WRONG_TYPE),
    ("cfg as null", flat(cfg=None), errors.REQUEST_WRONG_TYPE),
    ("cfg not a number", flat(cfg=float("nan")), errors.REQUEST_WRONG_TYPE),
    ("prompt as a number", flat(prompt=5), errors.REQUEST_WRONG_TYPE),
    ("media as an object", flat(reference_image={"url": IMAGE}), errors.REQUEST_WRONG_TYPE),
    ("images not an object", {**flat(), "images": "x"}, errors.REQUEST_WRONG_TYPE),
    ("width too small", flat(width=32), errors.REQUEST_OUT_OF_RANGE),
    ("height too large", flat(height=4096), errors.REQUEST_OUT_OF_RANGE),
    ("zero steps", flat(steps=0), errors.REQUEST_OUT_OF_RANGE),
    ("too many steps", flat(steps=1000), errors.REQUEST_OUT_OF_RANGE),
    ("negative cfg", flat(cfg=-1), errors.REQUEST_OUT_OF_RANGE),
    ("seed below -1", flat(seed=-2), errors.REQUEST_OUT_OF_RANGE),
    ("seed beyond 2**53", flat(seed=2**60), errors.REQUEST_OUT_OF_RANGE),
    ("an unknown field", flat(fps=30), errors.REQUEST_UNKNOWN_FIELD),
    ("an unknown nested field", {**flat(), "images": {"face": IMAGE}}, errors.REQUEST_UNKNOWN_FIELD),
    ("an oversize prompt", flat(prompt="x" * (MAX_PROMPT_CHARS + 1)), errors.REQUEST_TEXT_TOO_LONG),
    ("an oversize negative prompt", flat(negative_prompt="x" * (MAX_PROMPT_CHARS + 1)), errors.REQUEST_TEXT_TOO_LONG),
    ("an ftp URL", flat(reference_image="ftp://host/a.png"), errors.REQUEST_BAD_MEDIA_REF),
    ("a data URI", flat(dance_video="data:video/mp4;base64,AAAA"), errors.REQUEST_BAD_MEDIA_REF),
    ("an empty URL", flat(reference_image="  "), errors.REQUEST_BAD_MEDIA_REF),
    ("a field both flat and nested", {**flat(), "images": {"reference_image": IMAGE}}, errors.REQUEST_DUPLICATE_FIELD),
]


@pytest.mark.parametrize(("case", "body", "code"), BAD_REQUESTS, ids=[case for case, _, _ in BAD_REQUESTS])
def test_each_kind_of_bad_request_has_its_own_stable_code(case: str, body: object, code: str) -> None:
    with pytest.raises(errors.InvalidRequest) as raised:
        parse_request(body)
    assert raised.value.code == code
    assert raised.value.message
    assert not raised.value.retryable


#: Ids that look plain up to a final newline or another control character; ``$`` in a ``match`` would
#: let the first two through, and they would reach Redis keys, storage keys and the webhook-id header.
NEARLY_PLAIN_IDS = ["job-1\n", "job-1\r\n", "job-1\n\n", "job\n-1", "job-1\x00", "job-1\t", " job-1", "job/1", ".."]


@pytest.mark.parametrize("job_id", NEARLY_PLAIN_IDS)
def test_a_job_id_or_queue_with_a_trailing_newline_or_other_stray_character_is_refused(job_id: str) -> None:
    with pytest.raises(errors.InvalidRequest) as raised:
        check_job_id(job_id)
    assert (raised.value.code, raised.value.details["option"]) == (errors.REQUEST_BAD_OPTION, "job_id")
    with pytest.raises(errors.InvalidRequest):
        check_queue(job_id)


@pytest.mark.parametrize("batch_id", NEARLY_PLAIN_IDS)
def test_a_batch_id_with_a_trailing_newline_or_other_stray_character_is_refused(batch_id: str) -> None:
    with pytest.raises(errors.DanceError) as raised:
        check_batch_id(batch_id)
    assert raised.value.code == errors.BATCH_INVALID

