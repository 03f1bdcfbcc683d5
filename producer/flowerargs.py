"""``dance flower``'s command line: both option spellings, and no unauthenticated Flower beyond loopback.

Flower hands its arguments to tornado's ``parse_command_line``, which only knows ``--port=5555``: a value
in the next argument (``--port 5555``) fails with "Option 'port' requires a value". :func:`join_values`
rewrites every Flower option written with its value apart into the ``--name=value`` form, using Flower's
own option table. :func:`check_exposure` then refuses a Flower that would listen on more than loopback
without authentication, unless the operator said ``--no-auth``. Flower itself (``worker.telemetry``) also
puts ``/metrics`` behind the same authentication as its pages.
"""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import Mapping, Sequence

from producer.errors import CONFIG_INVALID, FLOWER_AUTH_REQUIRED, error

#: The Celery app Flower watches the cluster through: shared settings only, nothing of the GPU worker.
FLOWER_APP = "worker.telemetry.flowerapp"
#: Words tornado reads as a boolean option's value (anything else after a flag is the next argument).
BOOL_WORDS = frozenset({"true", "false", "t", "f", "1", "0"})
#: Flower options that turn authentication on, and the environment variables Flower reads them from.
AUTH_OPTIONS = {"basic-auth": "FLOWER_BASIC_AUTH", "auth": "FLOWER_AUTH"}
#: Host names that always mean loopback.
LOOPBACK_NAMES = frozenset({"localhost"})


def flower_options() -> dict[str, bool]:
    """Flower's options (tornado's spelling, ``-`` between words), each mapped to whether it is a flag."""
    try:
        import flower.options  # noqa: F401  (defines Flower's options in tornado's table)
        from tornado.options import options
    except ModuleNotFoundError as exc:
        raise error(CONFIG_INVALID, "Flower is not installed: pip install 'xicon-dance[flower]'",
                    missing=exc.name) from exc
    return {name: option.type is bool for name, option in options._options.items()}


def _option_name(arg: str) -> str | None:
    """The tornado name of ``--some_option``/``-some-option`` written without ``=value``, else None."""
    if not arg.startswith("-") or "=" in arg or arg.strip("-") == "":
        return None
    return arg.lstrip("-").replace("_", "-")


def join_values(args: Sequence[str], options: Mapping[str, bool]) -> list[str]:
    """``args`` with each ``--option value`` of a Flower option written as ``--option=value``."""
    joined: list[str] = []
    index = 0
    while index < len(args):
        arg, following = args[index], args[index + 1] if index + 1 < len(args) else None
        name = _option_name(arg)
        is_flag = options.get(name) if name is not None else None
        takes_next = following is not None and is_flag is not None and (
            following.lower() in BOOL_WORDS if is_flag else not following.startswith("--"))
        if takes_next:
            joined.append(f"{arg}={following}")
            index += 2
        else:
            joined.append(arg)
            index += 1
    return joined


def _last_value(args: Sequence[str], name: str, environ: Mapping[str, str], variable: str) -> str:
    """The value Flower will use: the last ``--name=value`` on the command line, else the variable's."""
    values = [arg.split("=", 1)[1] for arg in args
              if "=" in arg and arg.split("=", 1)[0].lstrip("-").replace("_", "-") == name]
    return values[-1] if values else environ.get(variable, "")


def is_loopback(address: str) -> bool:
    if address.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_exposure(args: Sequence[str], environ: Mapping[str, str], no_auth: bool) -> None:
    """Refuse a Flower without authentication that listens beyond loopback, unless ``no_auth`` says so.

    ``args`` are in ``--name=value`` form (:func:`join_values`). Flower's empty default address means
    every interface; a unix socket is reached only through its file's permissions.
    """
    if no_auth or any(_last_value(args, name, environ, variable).strip() for name, variable in AUTH_OPTIONS.items()):
        return
    if _last_value(args, "unix-socket", environ, "FLOWER_UNIX_SOCKET"):
        return
    address = _last_value(args, "address", environ, "FLOWER_ADDRESS")
    if not is_loopback(address):
        raise error(FLOWER_AUTH_REQUIRED,
                    f"Flower would listen on {address or 'every interface'} without authentication: give "
                    "--basic-auth=user:password (or FLOWER_BASIC_AUTH), bind to --address=127.0.0.1, or say --no-auth",
                    address=address or "0.0.0.0")


def flower_argv(args: Sequence[str], environ: Mapping[str, str], no_auth: bool, conf_file: str) -> list[str]:
    """The ``celery ... flower`` command line that ``dance flower`` runs, after the checks above."""
    joined = join_values(args, flower_options())
    check_exposure(joined, environ, no_auth)
    return [sys.executable, "-m", "celery", "-A", FLOWER_APP, "flower", f"--conf={conf_file}", *joined]
