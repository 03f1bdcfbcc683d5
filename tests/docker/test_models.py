"""``dance models``: resumable, verified downloads from a real loopback server, and ``--check``."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import requests
from click.testing import CliRunner, Result

from producer.errors import MODELS_CHECKSUM, MODELS_HTTP_ERROR, MODELS_UNAVAILABLE, DanceError
from tests.docker.range_server import Blob, RangeServer
from worker.models import (
    EXIT_GAPS,
    EXIT_OK,
    EXIT_USAGE,
    PART_SUFFIX,
    DownloadSettings,
    ModelFile,
    fetch_model,
    folder_lock,
    models,
)

#: Size of the fake model files, in bytes: several read chunks, small enough to stay fast.
BLOB_BYTES = 3 * (1 << 20) + 12345
#: Settings for direct calls: three attempts and no waiting between them.
FAST = DownloadSettings(attempts=3, retry_base_s=0.0, retry_cap_s=0.0, connect_timeout_s=2.0, read_timeout_s=5.0)


def fake_model(seed: int = 1, size: int = BLOB_BYTES) -> bytes:
    block = hashlib.sha256(str(seed).encode()).digest()
    return (block * (size // len(block) + 1))[:size]


def entry(url: str, body: bytes | None, folder: str = "diffusion_models", file: str = "fake.safetensors",
          **override: Any) -> dict[str, Any]:
    values: dict[str, Any] = {"folder": folder, "file": file, "url": url,
                              "sha256": hashlib.sha256(body).hexdigest() if body is not None else None,
                              "size_bytes": len(body) if body is not None else None}
    values.update(override)
    return values


def write_list(tmp_path: Path, *entries: dict[str, Any]) -> Path:
    path = tmp_path / "models.json"
    path.write_text(json.dumps({"models": list(entries)}))
    return path


def run(list_path: Path, models_dir: Path, *args: str) -> Result:
    return CliRunner().invoke(models, ["--list", str(list_path), "--models-dir", str(models_dir), *args])


def fetch(server_model: ModelFile, models_dir: Path, settings: DownloadSettings = FAST) -> Path:
    with requests.Session() as http:
        return fetch_model(server_model, models_dir, http, settings, sleep=lambda _s: None)


# Downloads ----------------------------------------------------------------------------------------------
def test_a_missing_model_is_downloaded_into_its_folder_and_verified(
    range_server: RangeServer, tmp_path: Path
) -> None:
    # Given a list naming one file that the models folder lacks
    body = fake_model()
    url = range_server.serve("/clip.safetensors", Blob(body))
    listed = write_list(tmp_path, entry(url, body, folder="clip_vision", file="clip_vision_h.safetensors"))
    # When `dance models` runs
    result = run(listed, tmp_path / "models")
    # Then the file sits in its folder with the listed bytes, and no part file is left behind
    assert result.exit_code == EXIT_OK, result.output
    target = tmp_path / "models" / "clip_vision" / "clip_vision_h.safetensors"
    assert target.read_bytes() == body
    assert not target.with_name(target.name + PART_SUFFIX).exists()
    assert "OK" in result.output and "sha256 verified" in result.output


def test_a_download_cut_off_midway_resumes_with_a_range_request_and_completes(
    range_server: RangeServer, tmp_path: Path
) -> None:
    # Given a server that drops the first response after 1 MiB
    body = fake_model()
    cut = 1 << 20
    url = range_server.serve("/model.bin", Blob(body, cut_times=1, cut_after_bytes=cut))
    model = ModelFile("diffusion_models", "model.bin", url, hashlib.sha256(body).hexdigest(), len(body))
    # When the model is fetched
    path = fetch(model, tmp_path)
    # Then the second request asked only for the missing bytes, and the result is whole and verified
    assert range_server.ranges("/model.bin") == [None, f"bytes={cut}-"]
    assert path.read_bytes() == body


def test_a_part_file_left_by_an_earlier_run_is_resumed_not_restarted(
    range_server: RangeServer, tmp_path: Path
) -> None:
    # Given an earlier, interrupted run that left the first 3000 bytes in a part file
    body = fake_model()
    url = range_server.serve("/model.bin", Blob(body))
    models_dir = tmp_path / "models"
    (models_dir / "vae").mkdir(parents=True)
    (models_dir / "vae" / f"model.bin{PART_SUFFIX}").write_bytes(body[:3000])
    listed = write_list(tmp_path, entry(url, body, folder="vae", file="model.bin"))
    # When `dance models` runs again
    result = run(listed, models_dir)
    # Then it asked for byte 3000 onwards only, and the file is complete
    assert result.exit_code == EXIT_OK, result.output
    assert range_server.ranges("/model.bin") == ["bytes=3000-"]
    assert (models_dir / "vae" / "model.bin").read_bytes() == body


def test_a_server_that_ignores_range_makes_the_download_start_over_from_byte_zero(
    range_server: RangeServer, tmp_path: Path
) -> None:
    # Given a part file and a server that answers every Range with the whole file (200)
    body = fake_model()
    url = range_server.serve("/model.bin", Blob(body, ignore_range=True))
    model = ModelFile("loras", "model.bin", url, hashlib.sha256(body).hexdigest(), len(body))
    part = tmp_path / "loras" / f"model.bin{PART_SUFFIX}"
    part.parent.mkdir(parents=True)
    part.write_bytes(body[:5000])
    # When the model is fetched
    path = fetch(model, tmp_path)
    # Then the body replaced the part instead of being appended to it
    assert range_server.ranges("/model.bin") == ["bytes=5000-"]
    assert path.read_bytes() == body


def test_a_checksum_mismatch_fails_loudly_and_leaves_neither_the_model_nor_its_part(
    range_server: RangeServer, tmp_path: Path
) -> None:
    # Given a list whose sha256 does not match what the server sends
    body = fake_model()
    url = range_server.serve("/model.bin", Blob(body))
    listed = write_list(tmp_path, entry(url, body, sha256="0" * 64))
    # When `dance models` runs
    result = run(listed, tmp_path / "models")
    # Then it fails with the mismatch's code, and ComfyUI could not pick up the wrong bytes
    assert result.exit_code == EXIT_GAPS
    assert MODELS_CHECKSUM in result.output
    folder = tmp_path / "models" / "diffusion_models"
    assert sorted(p.name for p in folder.iterdir()) == []


def test_transient_server_errors_are_retried_until_the_file_arrives(
    range_server: RangeServer, tmp_path: Path
) -> None:
    # Given a host that answers 503 twice
    body = fake_model()
    url = range_server.serve("/model.bin", Blob(body, fail_times=2))
    model = ModelFile("vae", "model.bin", url, hashlib.sha256(body).hexdigest(), len(body))
    # When the model is fetched with three attempts
    path = fetch(model, tmp_path)
    # Then the third request got it
    assert len(range_server.ranges("/model.bin")) == 3
    assert path.read_bytes() == body


def test_a_host_that_keeps_failing_ends_in_a_retryable_error_after_the_last_attempt(
    range_server: RangeServer, tmp_path: Path
) -> None:
    # Given a host that answers 503 more often than we try
    url = range_server.serve("/model.bin", Blob(fake_model(), fail_times=10))
    model = ModelFile("vae", "model.bin", url)
    # When the model is fetched with three attempts
    with pytest.raises(DanceError) as caught:
        fetch(model, tmp_path)
    # Then exactly three requests were made and the error says the host may heal
    assert len(range_server.ranges("/model.bin")) == 3
    assert caught.value.code == MODELS_UNAVAILABLE and caught.value.retryable


def test_a_client_error_fails_at_once_without_retrying(range_server: RangeServer, tmp_path: Path) -> None:
    # Given a URL that answers 404
    url = range_server.serve("/gone.bin", Blob(b"", status=404))
    # When it is fetched
    with pytest.raises(DanceError) as caught:
        fetch(ModelFile("vae", "gone.bin", url), tmp_path)
    # Then one request was enough to know, and the error is permanent
    assert len(range_server.ranges("/gone.bin")) == 1
    assert caught.value.code == MODELS_HTTP_ERROR and not caught.value.retryable


def test_an_unpinned_file_is_still_checked_against_the_length_the_server_announced(
    range_server: RangeServer, tmp_path: Path
) -> None:
    # Given an entry without sha256 or size, served with one cut-off response
    body = fake_model(seed=7)
    cut = 2 << 20
    url = range_server.serve("/free.bin", Blob(body, cut_times=1, cut_after_bytes=cut))
    # When it is fetched
    path = fetch(ModelFile("nlf", "free.bin", url), tmp_path)
    # Then the short body was noticed and resumed where the part file ends
    assert range_server.ranges("/free.bin") == [None, f"bytes={cut}-"]
    assert path.read_bytes() == body


def test_a_file_present_but_wrong_is_kept_unless_replace_is_given(range_server: RangeServer, tmp_path: Path) -> None:
    # Given a models folder holding a wrong copy of a listed file
    body = fake_model()
    url = range_server.serve("/model.bin", Blob(body))
    listed = write_list(tmp_path, entry(url, body, folder="vae", file="model.bin"))
    target = tmp_path / "models" / "vae" / "model.bin"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"not the model")
    # When `dance models` runs without, then with --replace
    kept = run(listed, tmp_path / "models")
    replaced = run(listed, tmp_path / "models", "--replace")
    # Then the first run reports the gap and touches nothing; the second fetches the right bytes
    assert kept.exit_code == EXIT_GAPS and "--replace" in kept.output
    assert range_server.ranges("/model.bin") == [None]
    assert replaced.exit_code == EXIT_OK, replaced.output
    assert target.read_bytes() == body


def test_two_downloaders_never_write_the_same_models_folder_at_once(
    range_server: RangeServer, tmp_path: Path
) -> None:
    # Given a downloader that holds the models folder
    body = fake_model()
    listed = write_list(tmp_path, entry(range_server.serve("/m.bin", Blob(body)), body))
    # When a second one starts
    with folder_lock(tmp_path / "models"):
        result = run(listed, tmp_path / "models")
    # Then it stops at once with models.busy and requests nothing
    assert result.exit_code == EXIT_GAPS
    assert "models.busy" in result.output
    assert range_server.ranges("/m.bin") == []


# --check ------------------------------------------------------------------------------------------------
def test_check_passes_when_every_file_is_present_and_matches(tmp_path: Path) -> None:
    # Given two listed files, both present with the right bytes
    first, second = fake_model(1, 5000), fake_model(2, 7000)
    models_dir = tmp_path / "models"
    for folder, name, body in (("vae", "a.pth", first), ("detection", "b.onnx", second)):
        (models_dir / folder).mkdir(parents=True)
        (models_dir / folder / name).write_bytes(body)
    listed = write_list(tmp_path, entry("https://example.invalid/a", first, folder="vae", file="a.pth"),
                        entry("https://example.invalid/b", second, folder="detection", file="b.onnx"))
    # When they are checked
    result = run(listed, models_dir, "--check")
    # Then the check passes
    assert result.exit_code == EXIT_OK, result.output
    assert result.output.count("sha256 verified") == 2


def test_check_names_every_missing_or_wrong_file_and_exits_non_zero(tmp_path: Path) -> None:
    # Given one file missing, one of the wrong size and one with the right size but other bytes
    good = fake_model(1, 4000)
    models_dir = tmp_path / "models"
    (models_dir / "vae").mkdir(parents=True)
    (models_dir / "vae" / "short.pth").write_bytes(good[:100])
    (models_dir / "vae" / "other.pth").write_bytes(fake_model(9, 4000))
    listed = write_list(
        tmp_path,
        entry("https://example.invalid/1", good, folder="vae", file="absent.pth"),
        entry("https://example.invalid/2", good, folder="vae", file="short.pth"),
        entry("https://example.invalid/3", good, folder="vae", file="other.pth"),
    )
    # When they are checked
    result = run(listed, models_dir, "--check")
    # Then each gap is named with its kind, and the exit code says so
    assert result.exit_code == EXIT_GAPS
    assert "MISSING    vae/absent.pth" in result.output
    assert "WRONG-SIZE vae/short.pth" in result.output
    assert "WRONG-HASH vae/other.pth" in result.output


def test_check_warns_loudly_about_files_the_list_does_not_pin_and_strict_counts_them(tmp_path: Path) -> None:
    # Given a present file whose entry pins no sha256 or size
    body = fake_model(3, 2048)
    models_dir = tmp_path / "models"
    (models_dir / "nlf").mkdir(parents=True)
    (models_dir / "nlf" / "model.torchscript").write_bytes(body)
    listed = write_list(tmp_path, entry("https://example.invalid/n", None, folder="nlf", file="model.torchscript"))
    # When it is checked, plainly and with --strict
    plain = run(listed, models_dir, "--check")
    strict = run(listed, models_dir, "--check", "--strict")
    # Then the plain check passes but says the content is unverified, and shows the hash to pin
    assert plain.exit_code == EXIT_OK
    assert "UNPINNED" in plain.output and "NOT verified" in plain.output
    assert hashlib.sha256(body).hexdigest() in plain.output
    assert "WARNING" in plain.output
    assert strict.exit_code == EXIT_GAPS


@pytest.mark.parametrize(
    ("override", "reason"),
    [
        ({"url": "https://huggingface.co/Kijai/x/blob/main/m.safetensors"}, "/resolve/"),
        ({"folder": "../etc"}, "inside the models folder"),
        ({"sha256": "ABC"}, "64 lowercase hex"),
        ({"size_bytes": -1}, "whole number"),
        ({"url": "ftp://host/m"}, "http(s)"),
    ],
)
def test_an_invalid_list_entry_is_refused_with_its_reason(tmp_path: Path, override: dict[str, Any],
                                                          reason: str) -> None:
    # Given a list with one malformed entry
    listed = write_list(tmp_path, {**entry("https://huggingface.co/a/b/resolve/main/m", b"x"), **override})
    # When the command reads it
    result = run(listed, tmp_path / "models", "--check")
    # Then it refuses to start and says why
    assert result.exit_code == EXIT_USAGE
    assert "models.list_invalid" in result.output and reason in result.output
