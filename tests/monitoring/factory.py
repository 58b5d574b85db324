"""Events built by hand for monitoring tests (created_at is event time)."""

from typing import Any

from monitoring.events import Event, Kind, Outcome


def make(
    request_id: str,
    at: float = 0.0,
    kind: Kind = "voice_search",
    outcome: Outcome = "ok",
    status_code: int = 200,
    **fields: Any,
) -> Event:
    return Event(
        request_id=request_id,
        created_at=at,
        kind=kind,
        route="/v1/x",
        status_code=status_code,
        outcome=outcome,
        **fields,
    )
