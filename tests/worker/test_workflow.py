"""Binding works on parsed JSON with typed values; the shipped workflow is a valid SCAIL template."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from producer import errors
from worker.settings import DEFAULT_WORKFLOW_PATH
from worker.workflow import KNOWN_PLACEHOLDERS, load_workflow, parse_workflow


def values(**overrides: object) -> dict[str, object]:
    base: dict[str, object] = {
        "reference_image_filename": "ref.png", "dance_video_filename": "clip.mp4", "prompt": "dance",
        "negative_prompt": "blurry", "width": 512, "height": 896, "steps": 6, "cfg": 1.0, "seed": 42,
        "output_prefix": "dance/job/dance", "job_id": "job",
    }
    return {**base, **overrides}


def test_the_shipped_workflow_binds_every_parameter_with_its_type() -> None:
    # Given the bundled dance workflow
    workflow = load_workflow(DEFAULT_WORKFLOW_PATH)
    # When it is bound
    graph = workflow.bind(values())
    # Then numbers are numbers, not strings ComfyUI must coerce
    assert graph["203"]["inputs"]["value"] == 512 and graph["204"]["inputs"]["value"] == 896
    assert graph["349"]["inputs"]["steps"] == 6 and graph["348"]["inputs"]["seed"] == 42
    assert graph["238"]["inputs"]["value"] == 1.0
    assert graph["106"]["inputs"]["image"] == "ref.png" and graph["130"]["inputs"]["video"] == "clip.mp4"
    assert graph["139"]["inputs"]["filename_prefix"] == "dance/job/dance"


def test_the_negative_prompt_takes_effect_in_the_shipped_workflow() -> None:
    graph = load_workflow(DEFAULT_WORKFLOW_PATH).bind(values(negative_prompt="no hats"))
    assert graph["368"]["inputs"]["negative_prompt"] == "no hats"


def test_a_tricky_prompt_reaches_the_graph_unchanged_and_is_not_substituted_again() -> None:
    tricky = 'a "quoted"\nline with {{seed}} and {{ width }}, 跳舞, \\n, }}{{'
    graph = load_workflow(DEFAULT_WORKFLOW_PATH).bind(values(prompt=tricky))
    assert graph["368"]["inputs"]["positive_prompt"] == tricky
    # and it survives the JSON trip to ComfyUI
    assert json.loads(json.dumps(graph))["368"]["inputs"]["positive_prompt"] == tricky


def test_binding_leaves_the_template_untouched_for_the_next_job() -> None:
    workflow = load_workflow(DEFAULT_WORKFLOW_PATH)
    workflow.bind(values(prompt="first"))
    assert workflow.graph["368"]["inputs"]["positive_prompt"] == "{{prompt}}"


def test_a_placeholder_inside_a_longer_string_is_formatted_in(tmp_path: Path) -> None:
    graph = {"1": {"class_type": "SaveImage", "inputs": {"filename_prefix": "out/{{job_id}}/x"}}}
    workflow = parse_workflow(graph, tmp_path / "wf.json")
    assert workflow.bind({"job_id": "j1"})["1"]["inputs"]["filename_prefix"] == "out/j1/x"


def test_the_shipped_workflow_names_its_model_files_and_node_classes() -> None:
    workflow = load_workflow(DEFAULT_WORKFLOW_PATH)
    files = {ref.filename for ref in workflow.model_refs()}
    assert "Wan21-14B-SCAIL-preview_fp8_e4m3fn_scaled_KJ.safetensors" in files
    assert "clip_vision_h.safetensors" in files
    assert {"WanVideoSamplerv2", "VHS_VideoCombine", "LoadImage", "VHS_LoadVideo"} <= workflow.class_types
    assert workflow.placeholders <= KNOWN_PLACEHOLDERS


@pytest.mark.parametrize(
    ("content", "code"),
    [
        ("{not json", errors.WORKFLOW_TEMPLATE),
        ("[]", errors.WORKFLOW_TEMPLATE),
        ('{"nodes": [], "links": []}', errors.WORKFLOW_TEMPLATE),
        ('{"1": {"inputs": {}}}', errors.WORKFLOW_TEMPLATE),
        ('{"1": {"class_type": "X", "inputs": []}}', errors.WORKFLOW_TEMPLATE),
        ('{"1": {"class_type": "X", "inputs": {"a": "{{nope}}"}}}', errors.WORKFLOW_PLACEHOLDER),
    ],
    ids=["not-json", "not-an-object", "ui-format", "no-class-type", "inputs-not-object", "unknown-placeholder"],
)
def test_a_malformed_template_is_refused_with_a_code(tmp_path: Path, content: str, code: str) -> None:
    path = tmp_path / "wf.json"
    path.write_text(content)
    with pytest.raises(errors.WorkflowInvalid) as raised:
        load_workflow(path)
    assert raised.value.code == code
