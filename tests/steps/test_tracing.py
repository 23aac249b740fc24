"""Tracing with the standard OTEL_* variables: a run's executions and steps are one
trace (its id is the run's id), spans reach a real OTLP/HTTP collector on loopback, and
outbound requests carry the step's span as ``traceparent``. Off without the variables."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from loopback_server import LoopbackServer, Reply
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from app import tracing
from tests.conftest import AppFactory, run_and_wait


@pytest.fixture
def collector() -> Iterator[LoopbackServer]:
    srv = LoopbackServer().start()
    srv.route("/v1/traces", Reply(200, [("Content-Type", "application/x-protobuf")], b""))
    yield srv
    srv.stop()


def exported_spans(collector: LoopbackServer) -> list[dict[str, Any]]:
    spans = []
    for hit in collector.hits_for("/v1/traces"):
        request = ExportTraceServiceRequest()
        request.ParseFromString(hit.body)
        for resource in request.resource_spans:
            service = {a.key: a.value.string_value for a in resource.resource.attributes}
            for scope in resource.scope_spans:
                for span in scope.spans:
                    attributes = {
                        a.key: a.value.string_value or a.value.int_value for a in span.attributes
                    }
                    spans.append(
                        {
                            "name": span.name,
                            "trace_id": span.trace_id.hex(),
                            "span_id": span.span_id.hex(),
                            "parent_id": span.parent_span_id.hex(),
                            "attributes": attributes,
                            "service": service.get("service.name"),
                            "error": span.status.code == 2,
                        }
                    )
    return spans


def flow(server: LoopbackServer) -> dict[str, Any]:
    answer = json.dumps({"status": "succeeded", "output": {"ok": True}}).encode()
    server.route("/step", Reply(200, [("Content-Type", "application/json")], answer))
    return {
        "name": "traced",
        "nodes": {
            "first": {"step": "set", "set": {"a": 1}},
            "remote": {"step": "call", "with": {"url": server.url("/step")}},
            "broken": {"step": "fail", "with": {"code": "nope", "message": "on purpose"}},
        },
        "edges": [{"from": "first", "to": "remote"}, {"from": "remote", "to": "broken"}],
    }


async def test_a_run_is_one_trace_and_outbound_requests_carry_traceparent(
    make_client: AppFactory,
    server: LoopbackServer,
    collector: LoopbackServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url("").rstrip("/"))
    monkeypatch.setenv("OTEL_SERVICE_NAME", "stepwise-test")
    client = await make_client()
    run = await run_and_wait(client, {"definition": flow(server), "inputs": {}})
    assert run["status"] == "failed"
    await client.stop()  # type: ignore[attr-defined]  # the lifespan's end flushes the spans

    spans = exported_spans(collector)
    trace_id = uuid.UUID(run["id"]).hex
    mine = [s for s in spans if s["attributes"].get("stepwise.run_id") == run["id"]]
    assert {s["trace_id"] for s in mine} == {trace_id}
    assert {s["service"] for s in mine} == {"stepwise-test"}
    [execution] = [s for s in mine if s["name"] == "stepwise.run"]
    steps = {
        s["attributes"]["stepwise.node"]: s for s in mine if s["name"].startswith("stepwise.step")
    }
    assert set(steps) == {"first", "remote", "broken"}
    assert {s["parent_id"] for s in steps.values()} == {execution["span_id"]}
    assert (
        steps["broken"]["error"] and steps["broken"]["attributes"]["stepwise.error_code"] == "nope"
    )
    assert not steps["remote"]["error"]

    [hit] = server.hits_for("/step")
    version, sent_trace, sent_parent, flags = hit.headers["traceparent"].split("-")
    assert (version, sent_trace, flags) == ("00", trace_id, "01")
    assert sent_parent == steps["remote"]["span_id"]  # the call step's own span


async def test_tracing_is_off_without_the_variables(
    make_client: AppFactory, server: LoopbackServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_TRACES_EXPORTER"):
        monkeypatch.delenv(name, raising=False)
    client = await make_client()
    run = await run_and_wait(client, {"definition": flow(server), "inputs": {}})
    assert run["status"] == "failed"
    [hit] = server.hits_for("/step")
    assert "traceparent" not in hit.headers


@pytest.mark.parametrize(
    ("environ", "on"),
    [
        ({}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, False),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, False),
    ],
)
def test_which_variables_turn_tracing_on(environ: dict[str, str], on: bool) -> None:
    assert tracing.enabled_by(environ) is on
