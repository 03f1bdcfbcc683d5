"""compose.yaml and compose.worker.yaml, read as Docker Compose reads them, hold the cluster's invariants."""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any

import botocore.configprovider
import botocore.credentials
import pytest
import yaml
from flower.options import options as flower_options

from gateway.auth import check_bind, load_keys
from gateway.settings import GatewaySettings
from producer.errors import GATEWAY_BIND_REFUSED, ConfigInvalid
from producer.settings import DEFAULT_QUEUE, ProducerSettings
from tests.docker.deployment import (
    COMPOSE,
    COMPOSE_WORKER,
    ENV_EXAMPLE,
    ENV_WORKER_EXAMPLE,
    ROOT,
    duration_s,
    environment,
    gpu_workers,
    load_compose,
    raw_compose,
    read_env_file,
    worker_services,
)
from worker.settings import WorkerSettings

#: Seconds a stopping worker gets beyond the longest job deadline (downloads, upload, ComfyUI's own stop).
MIN_GRACE_MARGIN_S = 60.0
#: Seconds between the end of the soft window and Docker's SIGKILL
#: (docs/celery-on-redis.md#graceful-shutdown).
SOFT_WINDOW_GAP_S = 5.0
LONG_RUNNING_RESTART = {"unless-stopped", "always"}
ONE_SHOTS = {"minio-init", "models"}


@pytest.fixture(scope="module")
def main() -> dict[str, Any]:
    return load_compose(COMPOSE, read_env_file(ENV_EXAMPLE))


@pytest.fixture(scope="module")
def extra_host() -> dict[str, Any]:
    return load_compose(COMPOSE_WORKER, read_env_file(ENV_WORKER_EXAMPLE))


@pytest.fixture(scope="module", params=["main", "extra_host"])
def each(request: pytest.FixtureRequest) -> dict[str, Any]:
    return dict(request.getfixturevalue(request.param))


def test_every_gpu_worker_reserves_its_own_single_gpu(each: dict[str, Any]) -> None:
    # Given the GPU workers of a compose file
    workers = gpu_workers(each)
    # When their device reservations are read
    ids = []
    for name, spec in workers.items():
        (device,) = spec["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and "gpu" in device["capabilities"], name
        (gpu,) = device["device_ids"]
        ids.append(gpu)
    # Then there are at least two, and no GPU is given to two workers
    assert len(ids) >= 2
    assert len(set(ids)) == len(ids)


def test_every_worker_is_an_instance_of_the_one_worker_definition() -> None:
    # Given the YAML nodes of compose.yaml
    root = yaml.compose(COMPOSE.read_text())
    top = {key.value: value for key, value in root.value}
    services = {key.value: value for key, value in top["services"].value}
    # When each worker service's merge key is followed
    for name, node in services.items():
        if not name.startswith("worker-"):
            continue
        merged = [value for key, value in node.value if key.value == "<<"]
        # Then it merges the very x-worker mapping, so the definition exists once
        assert merged and merged[0] is top["x-worker"], name


def test_redis_requires_a_password_and_every_client_sends_it(main: dict[str, Any]) -> None:
    # Given the Redis service and the password of the example environment
    password = read_env_file(ENV_EXAMPLE)["REDIS_PASSWORD"]
    command = main["services"]["redis"]["command"]
    # Then the server requires it, its health check authenticates, and every broker URL carries it
    assert command[command.index("--requirepass") + 1] == password
    assert environment(main["services"]["redis"])["REDISCLI_AUTH"] == password
    urls = [environment(spec)["CELERY_BROKER_URL"] for spec in main["services"].values()
            if "CELERY_BROKER_URL" in environment(spec)]
    assert urls and all(url.startswith(f"redis://:{password}@redis:") for url in urls)


@pytest.mark.parametrize("variable", ["REDIS_PASSWORD", "FLOWER_BASIC_AUTH", "MINIO_ROOT_PASSWORD",
                                      "DANCE_GATEWAY_API_KEYS"])
def test_the_cluster_refuses_to_start_without_its_secrets(variable: str) -> None:
    # Given the example environment less one secret
    env = read_env_file(ENV_EXAMPLE)
    del env[variable]
    # When compose.yaml is interpolated, then it fails (no silent empty password)
    with pytest.raises(LookupError, match=variable):
        load_compose(COMPOSE, env)


def test_flower_requires_basic_auth_and_keeps_a_capped_persistent_history(main: dict[str, Any]) -> None:
    # Given Flower's environment
    env = environment(main["services"]["flower"])
    # Then it authenticates, persists its state on a volume, and caps the tasks it keeps
    assert re.fullmatch(r"[^:,]+:[^,]+(,[^:,]+:[^,]+)*", env["FLOWER_BASIC_AUTH"])
    assert env["FLOWER_PERSISTENT"].lower() == "true"
    db_folder = str(Path(env["FLOWER_DB"]).parent)
    assert any(volume.split(":")[1] == db_folder for volume in main["services"]["flower"]["volumes"])
    assert 0 < int(env["FLOWER_MAX_TASKS"]) <= 100_000


def test_services_that_publish_ports_bind_them_to_loopback_by_default(main: dict[str, Any]) -> None:
    # Given the example environment, where every *_BIND is loopback, and compose.yaml read with no env at all
    unset = load_compose(COMPOSE, {name: value for name, value in read_env_file(ENV_EXAMPLE).items()
                                   if not name.endswith("_BIND")})
    for compose in (main, unset):
        for name, spec in compose["services"].items():
            for port in spec.get("ports", []):
                # Then every published port names 127.0.0.1 as its host address (basic auth is clear text)
                assert str(port).startswith("127.0.0.1:"), (name, port)
    assert main["services"]["flower"]["ports"]


#: What a process needs to reach the broker and the result storage (the workers' connection settings).
CONNECTION = ("CELERY_BROKER_URL", "DANCE_STORAGE_URL", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
              "AWS_SECRET_ACCESS_KEY", "AWS_REGION")


def test_the_gateway_reaches_redis_and_storage_exactly_as_the_workers_do(main: dict[str, Any]) -> None:
    # Given the gateway's environment and a worker's, both interpolated from the example .env
    gateway = environment(main["services"]["gateway"])
    worker = environment(main["services"]["worker-gpu0"])
    # Then the broker, the storage and its credentials are the same, so its jobs and assets are the workers'
    assert {name: gateway[name] for name in CONNECTION} == {name: worker[name] for name in CONNECTION}
    # and it starts only once Redis answers and the bucket exists
    assert main["services"]["gateway"]["depends_on"] == {
        "redis": {"condition": "service_healthy"}, "minio-init": {"condition": "service_completed_successfully"}}


def test_the_gateway_accepts_its_environment_and_is_health_checked_where_it_listens(main: dict[str, Any]) -> None:
    # Given the gateway service as the example .env makes it
    spec = main["services"]["gateway"]
    settings = GatewaySettings.from_env(environment(spec))
    # When its keys are loaded and its bind address is checked, as `dance gateway` does at start
    keys = load_keys(settings.keys_file, settings.api_keys)
    check_bind(settings.host, keys)
    # Then it runs the gateway from the cpu image, with keys, on every container address
    assert spec["command"] == ["dance", "gateway"]
    assert spec["build"]["target"] == "cpu" and spec["image"] == main["services"]["flower"]["image"]
    assert keys.enabled and settings.host == "0.0.0.0"
    # and the published port and the health check both name the port it listens on
    (port,) = spec["ports"]
    assert str(port).rsplit(":", 1)[1] == str(settings.port)
    assert f"http://127.0.0.1:{settings.port}/api/v2/health" in " ".join(spec["healthcheck"]["test"])


def test_the_gateway_without_keys_in_env_refuses_to_listen_beyond_loopback(main: dict[str, Any]) -> None:
    # Given the gateway's environment with DANCE_GATEWAY_API_KEYS left empty (meant for a mounted keys file)
    env = {**environment(main["services"]["gateway"]), "DANCE_GATEWAY_API_KEYS": ""}
    settings = GatewaySettings.from_env(env)
    # When no keys file is mounted either, then it refuses to start rather than serve everyone
    with pytest.raises(ConfigInvalid, match="loopback only") as refused:
        check_bind(settings.host, load_keys(settings.keys_file, settings.api_keys))
    assert refused.value.code == GATEWAY_BIND_REFUSED


def test_long_running_services_restart_on_their_own_and_one_shots_do_not(each: dict[str, Any]) -> None:
    # Given every service of the file
    for name, spec in each["services"].items():
        # Then one-shots never restart, and everything else comes back after a crash or a reboot
        if name in ONE_SHOTS:
            assert spec["restart"] == "no", name
        else:
            assert spec["restart"] in LONG_RUNNING_RESTART, name


def test_every_long_running_service_has_a_healthcheck(each: dict[str, Any]) -> None:
    for name, spec in each["services"].items():
        if name in ONE_SHOTS:
            continue
        check = spec.get("healthcheck") or {}
        assert check.get("test") and not check.get("disable"), name
    # and the workers' is the liveness check that says "ready and consuming"
    for name, spec in worker_services(each).items():
        assert spec["healthcheck"]["test"] == ["CMD", "dance", "check"], name


def test_the_stop_grace_period_covers_the_longest_job_and_the_soft_window_ends_before_it(
    each: dict[str, Any],
) -> None:
    for name, spec in worker_services(each).items():
        # Given a worker's grace period and deadlines
        env = environment(spec)
        grace_s = duration_s(spec["stop_grace_period"])
        longest_s = max(float(env["DANCE_JOB_DEADLINE_S"]), float(env["DANCE_MAX_JOB_DEADLINE_S"]))
        soft_s = float(env["DANCE_SOFT_SHUTDOWN_S"])
        # Then a job allowed to run its whole deadline can finish inside the soft window, and the cold
        # shutdown still has time to hand the message back before Docker's SIGKILL
        assert grace_s >= longest_s + MIN_GRACE_MARGIN_S, name
        assert soft_s == grace_s - SOFT_WINDOW_GAP_S, name
        assert soft_s >= longest_s, name
        # and the worker's own drain hands an unfinished job back before the entrypoint's backstop
        drain_s = float(env["DANCE_DRAIN_S"])
        assert longest_s <= drain_s < soft_s, name


def test_each_worker_environment_is_one_the_worker_accepts(each: dict[str, Any]) -> None:
    # Given each worker's environment as the container sees it
    for name, spec in worker_services(each).items():
        # When the worker builds its settings from it, then they validate (deadlines, visibility timeout)
        settings = WorkerSettings.from_env(environment(spec))
        assert settings.queues, name


def test_gpu_workers_take_their_class_queue_first_then_the_queue_producers_use_by_default(
    each: dict[str, Any],
) -> None:
    # Given the GPU workers' queues
    for name, spec in gpu_workers(each).items():
        queues = environment(spec)["DANCE_QUEUES"].split(",")
        # Then `--queue dance.<class>` pins a job to the class, and a job sent without --queue reaches any GPU
        assert re.fullmatch(r"dance\.[a-z0-9]+", queues[0]), name
        assert queues[1:] == [DEFAULT_QUEUE], name
    assert ProducerSettings.from_env({}).default_queue == DEFAULT_QUEUE


def test_models_are_shared_read_only_and_each_worker_has_its_own_comfyui_folders(each: dict[str, Any]) -> None:
    comfy_volumes = []
    for name, spec in gpu_workers(each).items():
        mounts = {volume.split(":")[1]: volume for volume in spec["volumes"]}
        # Then each GPU worker reads the one models volume, read-only
        assert mounts["/opt/ComfyUI/models"] == "models:/opt/ComfyUI/models:ro", name
        comfy_volumes.append(mounts["/data/comfyui"].split(":")[0])
    # and no two workers share ComfyUI's input/output folders
    assert len(set(comfy_volumes)) == len(comfy_volumes)
    # while the one-shot that downloads models is the only service that may write them
    assert each["services"]["models"]["volumes"] == ["models:/opt/ComfyUI/models"]


def test_the_worker_only_file_defines_the_same_worker_as_the_main_file() -> None:
    # Given the worker templates of both files, variables as written
    main, extra = raw_compose(COMPOSE), raw_compose(COMPOSE_WORKER)
    connection = {"CELERY_BROKER_URL", "DANCE_STORAGE_URL", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
                  "AWS_SECRET_ACCESS_KEY", "AWS_REGION"}
    # Then they differ only in how they reach the broker and storage (and in local-only dependencies)
    local_only = {"depends_on", "profiles"}
    assert {k: v for k, v in main["x-worker"].items() if k not in local_only} == extra["x-worker"]
    assert main["x-worker-env"].keys() == extra["x-worker-env"].keys()
    assert {k: v for k, v in main["x-worker-env"].items() if k not in connection} == \
        {k: v for k, v in extra["x-worker-env"].items() if k not in connection}


@pytest.mark.parametrize("variable", ["CELERY_BROKER_URL", "DANCE_STORAGE_URL", "AWS_ENDPOINT_URL", "DANCE_HOST_ID"])
def test_the_worker_only_file_refuses_to_start_without_the_remote_broker_and_storage(variable: str) -> None:
    env = read_env_file(ENV_WORKER_EXAMPLE)
    del env[variable]
    with pytest.raises(LookupError, match=variable):
        load_compose(COMPOSE_WORKER, env)


# Every variable a compose file sets must be one that something in the container reads -------------------
def variables_the_code_reads() -> set[str]:
    names: set[str] = set()
    python = [*(ROOT / "producer").rglob("*.py"), *(ROOT / "worker").rglob("*.py"), *(ROOT / "gateway").rglob("*.py")]
    patterns = [
        r'(?:env|environ)\.get\(\s*"([A-Z][A-Z0-9_]*)"',
        r'env_(?:float|int|bool)\(\s*\w+,\s*"([A-Z][A-Z0-9_]*)"',
        r'envvar="([A-Z][A-Z0-9_]*)"',
        r'environ\[\s*"([A-Z][A-Z0-9_]*)"\s*\]',
    ]
    for path in python:
        text = path.read_text()
        for pattern in patterns:
            names.update(re.findall(pattern, text))
    # The simulator reads COMFYSIM_<OPTION> through its env() helper.
    simulator = (ROOT / "simulator" / "settings.py").read_text()
    names.update(f"COMFYSIM_{name}" for name in re.findall(r'\benv\("([A-Z][A-Z0-9_]*)"', simulator))
    for script in (ROOT / "docker").glob("*.sh"):
        names.update(re.findall(r"\$\{?([A-Z][A-Z0-9_]*)", script.read_text()))
    return names


def variables_libraries_read() -> set[str]:
    """Read by the libraries inside our images, each looked up in the installed library itself."""
    names = {botocore.credentials.EnvProvider.ACCESS_KEY, botocore.credentials.EnvProvider.SECRET_KEY}
    if "name='AWS_ENDPOINT_URL'" in inspect.getsource(botocore.configprovider):
        names.add("AWS_ENDPOINT_URL")
    names.update(f"FLOWER_{option.upper().replace('-', '_')}" for option in flower_options._options)
    return names


#: Third-party images and the variables their own entrypoints or tools read.
THIRD_PARTY = {
    "redis": {"REDISCLI_AUTH"},  # redis-cli's password, so the health check needs no -a on its command line
    "minio": {"MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"},
    "minio-init": {"MC_HOST_dance"},  # mc's MC_HOST_<alias> defines the alias `dance`
}


def test_every_variable_the_compose_files_set_is_one_the_code_reads() -> None:
    # Given what our code, our scripts and the libraries of our images read
    readable = variables_the_code_reads() | variables_libraries_read()
    assert {"CELERY_BROKER_URL", "DANCE_QUEUES", "DANCE_SOFT_SHUTDOWN_S", "COMFYSIM_EXEC_S"} <= readable
    for path, env_file in ((COMPOSE, ENV_EXAMPLE), (COMPOSE_WORKER, ENV_WORKER_EXAMPLE)):
        compose = load_compose(path, read_env_file(env_file))
        for name, spec in compose["services"].items():
            # When a service sets a variable, then someone reads it (a typo would be silently ignored)
            allowed = THIRD_PARTY.get(name, readable)
            unread = set(environment(spec)) - allowed
            assert not unread, (path.name, name, sorted(unread))
