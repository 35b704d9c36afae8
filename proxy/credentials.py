"""The proxy's own credentials to the cluster (`upstream.auth`): secrets read from the YAML, a file or
the environment, turned into the Authorization header every upstream call carries.

Read once per config load (start and every reload): a rotated password file is picked up by a
SIGHUP, like a rotated certificate. A secret that cannot be read is a config error with its key
path, so `check-config` and a reload refuse it rather than the cluster refusing every request.
"""
from __future__ import annotations

import base64
import os
import stat
from collections.abc import Mapping
from pathlib import Path

from .config import ConfigError, UpstreamAuth

#: how each kind of credentials is sent (RFC 7617 Basic; Elasticsearch's ApiKey; RFC 6750 Bearer)
_SCHEMES = {"api_key": "ApiKey", "bearer": "Bearer"}


def read_secret(auth: UpstreamAuth, secret: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The value of `secret` ("password", "api_key" or "bearer") from wherever `auth` says it is;
    None if `auth` does not give it. Raises ConfigError (with the key path) when it cannot be read."""
    environ = os.environ if environ is None else environ
    for key in auth.sources(secret):
        where = f"upstream.auth.{key}"
        given = getattr(auth, key)
        if key.endswith("_file"):
            try:
                value = Path(given).read_text(encoding="utf-8")
            except FileNotFoundError:
                raise ConfigError([(where, f"no such file: {given}")]) from None
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError([(where, f"cannot read {given}: {getattr(exc, 'strerror', None) or exc}")]) from None
            value = value[:-1] if value.endswith("\n") else value  # `echo secret > file` adds one
            value = value[:-1] if value.endswith("\r") else value
        elif key.endswith("_env"):
            if given not in environ:
                raise ConfigError([(where, f"the environment variable {given} is not set")])
            value = environ[given]
        else:
            value = given
        if not value:
            raise ConfigError([(where, "is empty")])
        if any(ch in value for ch in "\r\n\0"):
            raise ConfigError([(where, "holds a line break or NUL, which cannot go in an HTTP header")])
        return value
    return None


def authorization(auth: UpstreamAuth, environ: Mapping[str, str] | None = None) -> str | None:
    """The Authorization header value for the cluster, or None when `upstream.auth` gives no credentials."""
    scheme = auth.scheme
    if scheme is None:
        return None
    if scheme == "basic":
        password = read_secret(auth, "password", environ)
        return "Basic " + base64.b64encode(f"{auth.username}:{password}".encode()).decode()
    token = read_secret(auth, scheme, environ)
    assert token is not None
    if scheme == "api_key" and ":" in token:  # "id:api_key" as the create-API-key response lists them
        token = base64.b64encode(token.encode()).decode()
    return f"{_SCHEMES[scheme]} {token}"


def check(auth: UpstreamAuth, environ: Mapping[str, str] | None = None) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """What `check-config` says about the credentials: (errors, warnings), each with its key path.
    An error is a secret that cannot be read; a warning is a secret file every user can read."""
    try:
        authorization(auth, environ)
    except ConfigError as exc:
        return exc.errors, []
    warnings = []
    for secret in ("password", "api_key", "bearer"):
        path = getattr(auth, f"{secret}_file")
        if path is not None:
            mode = os.stat(path).st_mode
            if mode & stat.S_IROTH:
                warnings.append((f"upstream.auth.{secret}_file", f"{path} is readable by every user on this machine "
                                 f"(mode {stat.S_IMODE(mode):04o}); chmod o-r it"))
    return [], warnings
