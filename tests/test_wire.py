"""The CMF wire format: parsing, validation and the exact shape of push and pull requests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cmf_airflow.wire import (EVENT_INPUT, EVENT_OUTPUT, WireError, parse_document, parse_pull_request,
                              parse_push_request, pull_request_body, push_request_body)
from server_utils import build_document

FIXTURE = Path(__file__).parent / "fixtures" / "cmf_client_push.json"


def _valid_document() -> dict:
    return build_document("daily", stages=1, executions_per_stage=1).to_json()


def test_document_round_trips_through_json():
    document = build_document("daily", stages=2, executions_per_stage=3)

    parsed = parse_document(json.loads(json.dumps(document.to_json())))

    assert parsed == document
    assert parsed.execution_count == 6


def test_push_request_body_has_cmf_keys():
    document = build_document("daily", stages=1, executions_per_stage=1)

    body = push_request_body("daily", document, exec_uuid="u-1")

    assert set(body) == {"pipeline_name", "exec_uuid", "json_payload"}
    assert body["exec_uuid"] == "u-1"
    assert isinstance(body["json_payload"], str)
    assert json.loads(body["json_payload"]) == document.to_json()
    assert parse_push_request(body) == ("daily", "u-1", document)


def test_pull_request_body_has_cmf_keys():
    body = pull_request_body("daily", last_sync_time=1700000000000)

    assert body == {"pipeline_name": "daily", "exec_uuid": None, "last_sync_time": 1700000000000}
    assert parse_pull_request(body) == ("daily", None, 1700000000000)


def test_cmf_client_payload_parses():
    body = json.loads(FIXTURE.read_text())

    pipeline_name, exec_uuid, document = parse_push_request(body)
    [pipeline] = document.pipelines
    train = pipeline.stages[2].executions[0]

    assert (pipeline_name, exec_uuid) == ("Test-env", None)
    assert [stage.name for stage in pipeline.stages] == [
        "Test-env/Prepare", "Test-env/Featurize", "Test-env/Train", "Test-env/Evaluate"]
    assert train.execution_uuid == "c3d4e5f6-3e19-11ef-a1d2-0242ac120002"
    assert train.name == ""
    assert [event.type for event in train.events] == [EVENT_INPUT, EVENT_OUTPUT]
    assert train.events[1].artifact.type == "Model"
    assert train.events[1].artifact.properties["model_framework"] == "SKlearn"
    assert document.execution_count == 4


def _without_uuid(document: dict) -> dict:
    del document["Pipeline"][0]["stages"][0]["executions"][0]["properties"]["Execution_uuid"]
    return document


def _set_in_execution(key: str, value) -> dict:
    document = _valid_document()
    document["Pipeline"][0]["stages"][0]["executions"][0][key] = value
    return document


def _set_in_artifact(key: str, value) -> dict:
    document = _valid_document()
    document["Pipeline"][0]["stages"][0]["executions"][0]["events"][0]["artifact"][key] = value
    return document


def _set_event_type(value) -> dict:
    document = _valid_document()
    document["Pipeline"][0]["stages"][0]["executions"][0]["events"][0]["type"] = value
    return document


def _set_property(value) -> dict:
    document = _valid_document()
    document["Pipeline"][0]["stages"][0]["executions"][0]["custom_properties"]["bad"] = value
    return document


def _pipeline_without_name() -> dict:
    document = _valid_document()
    del document["Pipeline"][0]["name"]
    return document


BAD_DOCUMENTS = [
    ("not an object", [], 400, "JSON object"),
    ("no Pipeline list", {"pipelines": []}, 400, '"Pipeline" list'),
    ("pipeline without name", _pipeline_without_name(), 400, "missing its name"),
    ("execution without uuid", _without_uuid(_valid_document()), 422, "Execution_uuid"),
    ("empty execution type", _set_in_execution("type", ""), 422, "type name"),
    ("execution type not a string", _set_in_execution("type", 5), 422, "type name"),
    ("over-long execution type", _set_in_execution("type", "t" * 300), 422, "over MLMD's limit"),
    ("unknown execution state", _set_in_execution("last_known_state", "DONE"), 422, "execution state"),
    ("events not a list", _set_in_execution("events", {}), 422, "must be a list"),
    ("artifact without uri", _set_in_artifact("uri", ""), 422, "uri"),
    ("artifact type with spaces", _set_in_artifact("type", " Dataset"), 422, "surrounding spaces"),
    ("unknown event type", _set_event_type(9), 422, "event type"),
    ("event type as string", _set_event_type("INPUT"), 422, "event type"),
    ("list property value", _set_property([1, 2]), 422, "string, number or boolean"),
    ("null property value", _set_property(None), 422, "string, number or boolean"),
    ("object property value", _set_property({"a": 1}), 422, "string, number or boolean"),
    ("properties not an object", _set_in_execution("properties", []), 422, "JSON object"),
    ("huge integer", _set_property(2**70), 422, "64-bit"),
]


@pytest.mark.parametrize(("case", "document", "status", "message"), BAD_DOCUMENTS, ids=[c[0] for c in BAD_DOCUMENTS])
def test_bad_document_rejected_with_status(case, document, status, message):
    with pytest.raises(WireError) as raised:
        parse_document(document)

    assert raised.value.status_code == status
    assert message in str(raised.value)


BAD_PUSH_BODIES = [
    ("body not an object", ["x"], 400, "JSON object"),
    ("no pipeline name", {"json_payload": "{}"}, 400, "pipeline_name"),
    ("blank pipeline name", {"pipeline_name": " ", "json_payload": "{}"}, 400, "pipeline_name"),
    ("payload not a string", {"pipeline_name": "daily", "json_payload": {"Pipeline": []}}, 400, "JSON string"),
    ("payload not JSON", {"pipeline_name": "daily", "json_payload": "{nope"}, 400, "not valid JSON"),
    ("exec_uuid not a string", {"pipeline_name": "daily", "exec_uuid": 3, "json_payload": "{}"}, 400, "exec_uuid"),
    ("pipeline not in payload", {"pipeline_name": "other", "json_payload": json.dumps(_valid_document())}, 422,
     "no pipeline named 'other'"),
]


@pytest.mark.parametrize(("case", "body", "status", "message"), BAD_PUSH_BODIES, ids=[c[0] for c in BAD_PUSH_BODIES])
def test_bad_push_request_rejected_with_status(case, body, status, message):
    with pytest.raises(WireError) as raised:
        parse_push_request(body)

    assert raised.value.status_code == status
    assert message in str(raised.value)


@pytest.mark.parametrize("last_sync_time", [-1, "yesterday", 1.5, True])
def test_bad_last_sync_time_rejected(last_sync_time):
    with pytest.raises(WireError) as raised:
        parse_pull_request({"pipeline_name": "daily", "last_sync_time": last_sync_time})

    assert raised.value.status_code == 400
    assert "last_sync_time" in str(raised.value)


def test_stage_and_pipeline_types_default_to_cmf_names():
    document = _valid_document()
    document["Pipeline"][0]["type"] = ""
    del document["Pipeline"][0]["stages"][0]["type"]

    parsed = parse_document(document)

    assert parsed.pipelines[0].type == "Parent_Context"
    assert parsed.pipelines[0].stages[0].type == "Pipeline_Stage"
