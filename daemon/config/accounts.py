"""The GWS accounts of `[gws]`: one (today's form), or `[[gws.accounts]]`.

A GWS session is one agent. The single-account form (`username` and a
password in `[gws]`) stays valid and is the account named `default`; several
agents are `[[gws.accounts]]` tables, each with its own `name`, `username`,
password source and, optionally, `channels` and `start_session` (the `[gws]`
values are their defaults). Everything else in `[gws]` is shared.

Each account becomes a whole `GwsSettings` (the shared values with its own
credentials and channels), so that its session and listener need not know
there are others.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from daemon.config.reader import Table
from daemon.config.settings import AccountSettings, GwsSettings, Secret
from daemon.config.values import read_secret_file, resolve, secret
from daemon.errors import ConfigError

DEFAULT_ACCOUNT = "default"
ACCOUNT_NAME = re.compile(r"[a-z0-9_-]{1,64}")
# The keys of one account; also the keys `[gws]` may not hold beside [[gws.accounts]].
_ACCOUNT_ONLY_KEYS = ("username", "password", "password_file")


def read_accounts(
    table: Table,
    shared: GwsSettings,
    base: Path,
    environ: Mapping[str, str],
    *,
    need_password: bool,
) -> tuple[AccountSettings, ...]:
    """The accounts `[gws]` names (`table` is `[gws]`; `shared` its other values)."""
    if not table.has("accounts"):
        return (_single(table, shared, base, environ, need_password=need_password),)
    for key in _ACCOUNT_ONLY_KEYS:
        if table.has(key):
            raise ConfigError(
                table.key(key),
                "set it in each [[gws.accounts]] table, not in [gws] beside them",
            )
    tables = table.tables("accounts")
    if not tables:
        raise ConfigError(table.key("accounts"), "must name at least one account")
    names: set[str] = set()
    accounts = []
    for entry in tables:
        account = _account(entry, shared, base, environ, need_password=need_password)
        if account.name in names:
            raise ConfigError(entry.key("name"), f"duplicate account name {account.name!r}")
        names.add(account.name)
        accounts.append(account)
    return tuple(accounts)


def _single(
    table: Table,
    shared: GwsSettings,
    base: Path,
    environ: Mapping[str, str],
    *,
    need_password: bool,
) -> AccountSettings:
    """Today's form: the one account is `default`."""
    username = table.string("username")
    password, source = _password(table, base, need_password=need_password)
    if password is None and environ.get("GWS_PASSWORD"):
        password = Secret(environ["GWS_PASSWORD"])
    if password is None:
        password, source = _credential(environ, "gws-password", base)
    password = _required(table, password, need_password, "or $GWS_PASSWORD, ", "gws-password")
    gws = replace(shared, username=username, password=password, password_file=source)
    return AccountSettings(name=DEFAULT_ACCOUNT, gws=gws)


def _account(
    table: Table,
    shared: GwsSettings,
    base: Path,
    environ: Mapping[str, str],
    *,
    need_password: bool,
) -> AccountSettings:
    name = table.string("name")
    if not ACCOUNT_NAME.fullmatch(name):
        raise ConfigError(
            table.key("name"), f"{name!r}: use 1 to 64 of a-z, 0-9, - and _ (lower case)"
        )
    username = table.string("username")
    password, source = _password(table, base, need_password=need_password)
    if password is None:
        password, source = _credential(environ, name, base)
    password = _required(table, password, need_password, "", name)
    gws = replace(
        shared,
        username=username,
        password=password,
        password_file=source,
        channels=channels(table, shared.channels),
        start_session=table.boolean("start_session", shared.start_session),
    )
    table.finish()
    return AccountSettings(name=name, gws=gws)


def _password(
    table: Table, base: Path, *, need_password: bool
) -> tuple[Secret | None, Path | None]:
    """`password` or `password_file` of `table`, and the file it came from."""
    if not need_password:  # the file is not read: it may be readable by the service only
        value = table.optional_string("password")
        table.optional_string("password_file")
        return (Secret(value) if value else None), None
    password = secret(table, base, value_key="password", file_key="password_file")
    file_text = table.optional_string("password_file")
    source = resolve(file_text, base) if password is not None and file_text else None
    return password, source


def _credential(
    environ: Mapping[str, str], credential: str, base: Path
) -> tuple[Secret | None, Path | None]:
    """The systemd credential `credential` ($CREDENTIALS_DIRECTORY/<credential>), if given."""
    directory = environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        return None, None
    candidate = Path(directory) / credential
    if not candidate.exists():
        return None, None
    return read_secret_file(f"$CREDENTIALS_DIRECTORY/{credential}", str(candidate), base), candidate


def _required(
    table: Table, password: Secret | None, need_password: bool, environment: str, credential: str
) -> Secret:
    if password is not None:
        return password
    if not need_password:
        return Secret("")
    raise ConfigError(
        table.key("password"),
        f"no password: set password or password_file, {environment}"
        f"or provide the systemd credential {credential}",
    )


def channels(table: Table, default: tuple[str, ...]) -> tuple[str, ...]:
    """`channels` of `table`: Bayeux channels to subscribe (never /meta/)."""
    names = table.string_list("channels", default)
    for index, channel in enumerate(names):
        if not channel.startswith("/") or channel.startswith("/meta/"):
            raise ConfigError(
                f"{table.key('channels')}[{index}]",
                f"{channel!r} is not a subscribable Bayeux channel",
            )
    return names
