"""schemathesis over every route of a real server: no 500, and every error in the one JSON shape.

The cases come from the service's own OpenAPI document (hypothesis-generated parameters and
bodies), sent with the admin token so the admin routes are fuzzed past their authentication too.
The bounded example count keeps this a CI test; `schemathesis run` against a server
(docs/benchmarks.md) fuzzes at full size. (schemathesis's pytest plugin reads a private pytest
attribute that pytest 9 removed, so the operations are driven here with hypothesis directly.)
"""

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.core.result import Err

from serving.local_server import Server, running_server

pytestmark = pytest.mark.server

ADMIN_TOKEN = "fuzz-token"
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
EXAMPLES_PER_ROUTE = 12


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Server]:
    with running_server(
        tmp_path_factory.mktemp("fuzz"),
        model_dir=str(tiny_model_dir),
        admin_token=ADMIN_TOKEN,
        fault_injection="true",
        bias_decoding="false",
    ) as server:
        yield server


def error_shape_problem(response: Any) -> str | None:
    """What is wrong with a response, for this test: a 500, or an error off the documented shape."""
    if response.status_code == 500:
        return f"500: {response.text[:300]}"
    if response.status_code < 400:
        return None
    try:
        body = response.json()
        error = body["error"]
        ok = set(body) == {"error"} and all(
            isinstance(error[k], str) and error[k] for k in ("type", "message")
        )
        ok = ok and (error.get("request_id") is None or isinstance(error["request_id"], str))
    except (ValueError, KeyError, TypeError):
        ok = False
    return None if ok else f"{response.status_code} off the error shape: {response.text[:300]}"


def test_no_route_answers_500_and_every_error_has_the_documented_shape(fuzz_server: Server) -> None:
    """Every operation of the OpenAPI document, fuzzed in turn (derandomized: the same cases each
    run); all problems are collected, then reported together."""
    schema = schemathesis.openapi.from_url(fuzz_server.url + "/openapi.json")
    problems: list[str] = []
    fuzzed: list[str] = []
    calls: list[int] = []
    for result in schema.get_all_operations():
        if isinstance(result, Err):
            problems.append(f"an operation the fuzzer cannot read: {result.err()}")
            continue
        operation = result.ok()
        fuzzed.append(operation.label)

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES_PER_ROUTE,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def fuzz(case: Any) -> None:
            response = case.call(headers=AUTH, timeout=60)
            calls.append(response.status_code)
            if problem := error_shape_problem(response):
                problems.append(f"{case.method} {case.formatted_path}: {problem}")

        fuzz()
    expected = {"POST /v1/search", "POST /v1/transcribe", "POST /v1/feedback", "POST /v1/admin/rollout"}
    assert expected | {"POST /v1/audio/transcriptions"} <= set(
        fuzzed
    )  # a document that lost its routes proves nothing
    assert len(calls) >= 2 * len(fuzzed)  # cases were generated and sent for the operations
    assert not problems, "\n".join(problems[:20])
    print(f"fuzzed {len(fuzzed)} operations with {len(calls)} requests: {sorted(Counter(calls).items())}")


def test_a_boolean_is_not_a_delay(fuzz_server: Server) -> None:
    """Found by schemathesis: `{"asr_delay_ms": false}` was read as 0 and accepted."""
    url = fuzz_server.url + "/v1/admin/faults"
    refused = httpx.post(url, headers=AUTH, json={"asr_delay_ms": False}, timeout=10)
    assert refused.status_code == 422 and error_shape_problem(refused) is None
    assert httpx.post(url, headers=AUTH, json={"asr_delay_ms": 0}, timeout=10).status_code == 200
