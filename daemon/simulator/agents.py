"""The simulated GWS's users (agents): who may log in, their workspaces, their HTTP sessions.

Three kinds of user, one behaviour:

* the configured user, `settings.username` / `settings.password`, read afresh at
  every lookup (tests change them directly, as an administrator would);
* `agent-0001` … `agent-NNNN` (`settings.agents` of them, four digits), made with
  the simulator's password of the moment the setting first asks for them; raising
  the setting at runtime adds users, lowering it removes the generated ones above
  it, their sessions with them;
* users added or changed with `put()` (`POST /control/users`).

Each user has its own email workspace (id -> resource) and its own HTTP sessions.
A session belongs to the user who authenticated it and holds the per-session
referenceId counter, so two users' first Sends both get referenceId 1.

Rules it keeps: looking up a user or a session costs O(1) whatever the number of
users (1,000 log in at once in the scale benchmark); dropping one user's sessions
walks that user's only; it never speaks HTTP or Bayeux: whoever owns the Bayeux
clients of a session hears of every dropped session through `on_session_dropped`.
"""

from __future__ import annotations

import hmac
import secrets
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

__all__ = ["MAX_GENERATED", "Agent", "Agents", "Credentials", "HttpSession", "generated_name"]

MAX_GENERATED: Final = 9999  # four digits


class Credentials(Protocol):
    """What of the simulator's settings the users come from."""

    username: str
    password: str
    agents: int


def generated_name(number: int) -> str:
    """The name of the `number`th generated user: `agent-0001` for 1."""
    return f"agent-{number:04d}"


def _user_id(name: str | None) -> str:
    # Stable across runs; the configured user keeps the id it has always had.
    path = "gws-simulator" if name is None else f"gws-simulator/{name}"
    return uuid.uuid5(uuid.NAMESPACE_URL, path).hex


@dataclass(eq=False, slots=True)
class Agent:
    """One user: credentials, email workspace, HTTP sessions."""

    name: str
    password: str
    user_id: str
    generated: bool = False
    emails: dict[str, dict[str, Any]] = field(default_factory=dict)
    sessions: dict[str, HttpSession] = field(default_factory=dict)


@dataclass(eq=False, slots=True)
class HttpSession:
    """One HTTP session (a JSESSIONID): its CSRF token and its referenceId counter."""

    session_id: str
    csrf_token: str
    agent: Agent
    next_reference_id: int = 1

    def take_reference_id(self) -> int:
        reference_id = self.next_reference_id
        self.next_reference_id += 1
        return reference_id


class Agents:
    """The users of one simulator and the HTTP sessions they hold."""

    def __init__(
        self,
        settings: Credentials,
        *,
        on_session_dropped: Callable[[str], object] = lambda _session_id: None,
    ) -> None:
        self._settings = settings
        self._on_session_dropped = on_session_dropped
        self._configured = Agent(
            name=settings.username, password=settings.password, user_id=_user_id(None)
        )
        self._others: dict[str, Agent] = {}
        self._generated = 0
        self._sessions: dict[str, HttpSession] = {}
        self._sync_generated()

    # -- users -----------------------------------------------------------------

    @property
    def configured(self) -> Agent:
        """The configured user (`settings.username`), with its credentials of the moment."""
        agent = self._configured
        agent.name = self._settings.username
        agent.password = self._settings.password
        return agent

    def get(self, name: str) -> Agent | None:
        """The user called `name`, or None."""
        if name == self._settings.username:
            return self.configured
        self._sync_generated()
        return self._others.get(name)

    def authenticate(self, name: str, password: str) -> Agent | None:
        """The user if `password` is theirs, else None."""
        agent = self.get(name)
        if agent is None or not hmac.compare_digest(password.encode(), agent.password.encode()):
            return None
        return agent

    def put(self, name: str, password: str) -> tuple[Agent, bool]:
        """Add a user, or give an existing one this password; (the user, whether added).

        A changed password logs the user out everywhere, as `set_password` does.
        """
        agent = self.get(name)
        if agent is None:
            agent = Agent(name=name, password=password, user_id=_user_id(name))
            self._others[name] = agent
            return agent, True
        if agent.password != password:
            self.set_password(agent, password)
        return agent, False

    def set_password(self, agent: Agent, password: str) -> None:
        """The user's password changes: the old one is refused from now on, and every
        session of theirs (and only theirs) is dropped."""
        if agent is self._configured:
            self._settings.password = password
        agent.password = password
        self.drop_sessions(agent)

    def __len__(self) -> int:
        self._sync_generated()
        # A generated or added user may share the configured user's name; it counts once.
        return 1 + len(self._others) - (self._settings.username in self._others)

    def _sync_generated(self) -> None:
        """Make or remove `agent-NNNN` users until there are `settings.agents` of them."""
        wanted = min(max(self._settings.agents, 0), MAX_GENERATED)
        made = self._generated
        if wanted == made:
            return
        for number in range(made + 1, wanted + 1):
            name = generated_name(number)
            if name not in self._others:
                self._others[name] = Agent(
                    name=name,
                    password=self._settings.password,
                    user_id=_user_id(name),
                    generated=True,
                )
        for number in range(wanted + 1, made + 1):
            agent = self._others.get(generated_name(number))
            if agent is not None and agent.generated:
                self.drop_sessions(agent)
                del self._others[agent.name]
        self._generated = wanted

    # -- sessions --------------------------------------------------------------

    def open_session(self, agent: Agent) -> HttpSession:
        """A new HTTP session of `agent`, with a fresh id and CSRF token."""
        session = HttpSession(
            session_id=secrets.token_hex(16).upper(),
            csrf_token=secrets.token_urlsafe(24),
            agent=agent,
        )
        self._sessions[session.session_id] = session
        agent.sessions[session.session_id] = session
        return session

    def session(self, session_id: str | None) -> HttpSession | None:
        """The live session with this id, or None."""
        return self._sessions.get(session_id) if session_id else None

    def end_session(self, session: HttpSession) -> None:
        """Drop one session (a logout)."""
        self._sessions.pop(session.session_id, None)
        session.agent.sessions.pop(session.session_id, None)
        self._on_session_dropped(session.session_id)

    def drop_sessions(self, agent: Agent) -> int:
        """Drop every session of `agent`; returns how many."""
        doomed = list(agent.sessions.values())
        for session in doomed:
            self.end_session(session)
        return len(doomed)

    def drop_all_sessions(self) -> None:
        """Drop every session of every user (a GWS restart)."""
        for session in list(self._sessions.values()):
            self.end_session(session)

    @property
    def session_count(self) -> int:
        return len(self._sessions)

    def sessions(self) -> Iterator[HttpSession]:
        """Every live session, of every user."""
        return iter(list(self._sessions.values()))
