"""The security settings of a server, checked without gRPC (settings classes import this, servers
:mod:`alutwin.rpc`): whether a host is loopback (:func:`is_loopback`), the bearer token from the settings or an
environment variable (:func:`resolve_token`), and what is wrong with the token and TLS settings taken together
(:func:`security_problems`)."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

from alutwin.config import TOKEN_MIN_LENGTH

__all__ = ["ServerSecurity", "is_loopback", "resolve_token", "security_problems"]


def is_loopback(host: str) -> bool:
    """True when ``host`` is a loopback address (or ``localhost``), brackets of an IPv6 address allowed."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def security_problems(
    token: str | None, token_env: str | None, tls_cert: Path | None, tls_key: Path | None
) -> list[str]:
    """What is wrong with a server's security settings taken together (empty when nothing is): a token given both
    in the file and by variable name, or one TLS file without the other."""
    problems = []
    if token is not None and token_env is not None:
        problems.append("give token or token_env, not both")
    if (tls_cert is None) != (tls_key is None):
        problems.append("tls_cert and tls_key go together (give both for TLS, or neither)")
    return problems


def resolve_token(token: str | None, token_env: str | None) -> str | None:
    """A server's bearer token: ``token``, else the value of the environment variable ``token_env``; None when
    neither is set (or the variable is empty).

    Raises
    ------
    ValueError
        The variable holds a token shorter than 16 characters.
    """
    if token is not None:
        return token
    if token_env is None:
        return None
    value = os.environ.get(token_env)
    if not value:
        return None
    if len(value) < TOKEN_MIN_LENGTH:
        raise ValueError(f"the token in ${token_env} must be at least {TOKEN_MIN_LENGTH} characters long")
    return value


class ServerSecurity:
    """The security members of a server's settings class (a mixin of a :func:`alutwin.config.config_dataclass`
    with the fields ``host``, ``token``, ``token_env``, ``tls_cert`` and ``tls_key``): :attr:`tls`,
    :attr:`loopback`, :meth:`resolve_token` and, for its validator, :meth:`security_problems`."""

    host: str
    token: str | None
    token_env: str | None
    tls_cert: Path | None
    tls_key: Path | None

    @property
    def tls(self) -> bool:
        """True when the server serves TLS."""
        return self.tls_cert is not None

    @property
    def loopback(self) -> bool:
        """True when ``host`` is a loopback address (or ``localhost``)."""
        return is_loopback(self.host)

    def resolve_token(self) -> str | None:
        """The bearer token: ``token``, else the value of the ``token_env`` variable; None when neither is set.

        Raises
        ------
        ValueError
            The variable holds a token shorter than 16 characters.
        """
        return resolve_token(self.token, self.token_env)

    def security_problems(self) -> list[str]:
        """What is wrong with the token and TLS settings taken together (:func:`security_problems`)."""
        return security_problems(self.token, self.token_env, self.tls_cert, self.tls_key)
