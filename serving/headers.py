"""HTTP headers the service and its clients (replay, simulator, benchmarks) agree on."""

EVENT_TIME_HEADER = "X-Event-Time"
"""A replayed request's traffic time (seconds since the epoch), honoured when the server trusts
client time (`VOICE_SEARCH_TRUST_CLIENT_TIME`)."""
REQUEST_ID_HEADER = "X-Request-ID"
"""The id of the request's event, on every answer."""
