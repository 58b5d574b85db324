"""Session analytics: what users did after a voice search, from the sequence of a session's events.

- **redo**: a voice search followed by another voice search in the same session within
  `redo_window_s`, with no click on the first one's results;
- **switch to typing**: a voice search followed (within the same window) by a typed search.

Computed from the event store's events, never stored: the same events give the same signals in
the monitor, the canary gates, the window metrics and the label export.
"""

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from monitoring.events import Event


@dataclass(frozen=True)
class SessionSignals:
    """Behaviour signals over voice searches: which were redone, which were followed by typing."""

    voice_searches: int
    redo: tuple[str, ...]
    switch_to_typing: tuple[str, ...]
    clicked: tuple[str, ...]
    typed_after: tuple[tuple[str, str], ...] = ()
    """(voice search, the text search that followed it): what the user typed instead."""

    @property
    def redo_ratio(self) -> float:
        return len(self.redo) / self.voice_searches if self.voice_searches else 0.0

    @property
    def switch_to_typing_ratio(self) -> float:
        return len(self.switch_to_typing) / self.voice_searches if self.voice_searches else 0.0


def session_signals(events: Sequence[Event], redo_window_s: float) -> SessionSignals:
    """Redo, switch-to-typing and click signals of the voice searches among `events`.

    A voice search is judged by the next search (voice or text) in its session: a redo when that
    is a voice search within `redo_window_s` and nothing of the first was clicked in between; a
    switch to typing when it is a text search within the window.
    """
    by_session: dict[str, list[Event]] = {}
    for event in sorted(events, key=lambda e: e.created_at):
        # Refused or failed requests are not searches the user saw answered (a 503 then a retry
        # is not a redo).
        if event.session_id is not None and event.outcome not in ("client_error", "server_error"):
            by_session.setdefault(event.session_id, []).append(event)
    first_click: dict[str, float] = {}
    for e in events:
        # A refused feedback request (unknown target, bad body) is not a click.
        if e.kind == "feedback" and e.clicked_id and e.target_request_id and e.status_code < 400:
            first_click[e.target_request_id] = min(
                e.created_at, first_click.get(e.target_request_id, e.created_at)
            )
    voice, redo, typed = 0, [], []
    typed_after: list[tuple[str, str]] = []
    for session in by_session.values():
        searches = [e for e in session if e.kind in ("voice_search", "text_search")]
        # A window may hold only a session's feedback (its searches fell before the window).
        for current, following in zip(searches, [*searches[1:], None][: len(searches)], strict=True):
            if current.kind != "voice_search":
                continue
            voice += 1
            if following is None or following.created_at - current.created_at > redo_window_s:
                continue
            if following.kind == "text_search":
                typed.append(current.request_id)
                typed_after.append((current.request_id, following.request_id))
            elif first_click.get(current.request_id, following.created_at) >= following.created_at:
                redo.append(current.request_id)
    return SessionSignals(
        voice_searches=voice,
        redo=tuple(redo),
        switch_to_typing=tuple(typed),
        clicked=tuple(sorted(first_click)),
        typed_after=tuple(typed_after),
    )


class SessionTracker:
    """`session_signals` online: told each event as it is recorded, it names the signals that
    event completes, by the same definitions, keeping only the last voice search per session.

    Memory is bounded: the least recently active sessions are forgotten past `max_sessions`.
    """

    def __init__(self, redo_window_s: float, max_sessions: int = 100_000) -> None:
        self.redo_window_s, self.max_sessions = redo_window_s, max_sessions
        self._last_voice: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._clicked: OrderedDict[str, None] = OrderedDict()

    def observe(self, event: Event) -> list[str]:
        """Signals completed by `event`: "redo", "switch_to_typing" (about the session's previous
        voice search) or "click"."""
        if event.kind == "feedback" and event.clicked_id and event.target_request_id:
            if event.status_code >= 400 or event.target_request_id in self._clicked:
                return []
            self._remember(self._clicked, event.target_request_id, None)
            return ["click"]
        searched = event.kind in ("voice_search", "text_search")
        if not searched or event.session_id is None or event.outcome in ("client_error", "server_error"):
            return []
        signals: list[str] = []
        previous = self._last_voice.pop(event.session_id, None)
        if previous is not None and event.created_at - previous[1] <= self.redo_window_s:
            if event.kind == "text_search":
                signals.append("switch_to_typing")
            elif previous[0] not in self._clicked:
                signals.append("redo")
        if event.kind == "voice_search":
            self._remember(self._last_voice, event.session_id, (event.request_id, event.created_at))
        return signals

    def _remember(self, table: "OrderedDict[str, Any]", key: str, value: Any) -> None:
        table[key] = value
        table.move_to_end(key)
        while len(table) > self.max_sessions:
            table.popitem(last=False)
