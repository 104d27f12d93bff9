"""Send bodies as the integration posts them: GWS's contract, GWS-style errors, never raises."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.gws.operations import (
    INVALID,
    MISSING,
    Invalid,
    Operation,
    SendRequest,
    parse_operation,
    validate_send,
)
from tests.harness.edits import edited

# The two request samples of the GWS API v2 documentation page of the email Send
# operation, verbatim.
GWS_SAMPLE: dict[str, Any] = {
    "operationName": "Send",
    "queueName": "Forwarde-mails",
    "email": {
        "body": "Feelslikegood.",
        "to": ["qwerty@gplus-w2k3-gf80", "bruce.one@witcher.xyz"],
        "from": "htcc@gplus-w2k3-gf80",
        "subject": "HelloEmail",
    },
}
GWS_SAMPLE_CC: dict[str, Any] = {
    "operationName": "Send",
    "queueName": "Forwarde-mails",
    "email": {
        "body": "Feelslikegood.",
        "to": ["qwerty@gplus-w2k3-gf80", "bruce.one@witcher.xyz"],
        "cc": ["alan.key@bestbuy.com"],
        "bcc": ["brad.johnson@bestbuy.com"],
        "from": "htcc@gplus-w2k3-gf80",
        "subject": "HelloEmail",
    },
}


def body(**changes: Any) -> dict[str, Any]:
    """The GWS sample with top-level keys replaced (None deletes)."""
    return edited(GWS_SAMPLE, changes)


def email(**changes: Any) -> dict[str, Any]:
    """The GWS sample with `email` keys replaced (None deletes)."""
    return edited(GWS_SAMPLE, changes, within="email")


def parse(data: object) -> SendRequest | Operation | Invalid:
    return parse_operation(orjson.dumps(data))


@pytest.mark.parametrize("sample", [GWS_SAMPLE, GWS_SAMPLE_CC], ids=["plain", "cc-bcc"])
def test_gws_samples_are_valid_sends(sample: dict[str, Any]) -> None:
    parsed = parse(sample)
    assert parsed == SendRequest(
        queue_name="Forwarde-mails",
        to=("qwerty@gplus-w2k3-gf80", "bruce.one@witcher.xyz"),
        sender="htcc@gplus-w2k3-gf80",
        subject="HelloEmail",
    )


def test_subject_is_optional() -> None:
    parsed = parse(email(subject=None))
    assert isinstance(parsed, SendRequest)
    assert parsed.subject is None


def test_comma_delimited_cc_and_bcc_are_accepted() -> None:
    assert isinstance(parse(email(cc="a@x.example, b@x.example", bcc="c@x.example")), SendRequest)


def test_save_lar_boolean_is_accepted() -> None:
    assert isinstance(parse(body(saveLAR=True)), SendRequest)


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (body(operationName=None), "operationName"),
        (body(queueName=None), "queueName"),
        (body(email=None), "email"),
        (email(to=None), "email.to"),
        (email(**{"from": None}), "email.from"),
    ],
)
def test_missing_required_field_is_status_1_naming_the_field(
    data: dict[str, Any], field: str
) -> None:
    parsed = parse(data)
    assert isinstance(parsed, Invalid)
    assert parsed.status_code == MISSING == 1
    assert parsed.field == field
    assert f"'{field}'" in parsed.message
    assert parsed.as_json() == {"statusCode": 1, "statusMessage": parsed.message, "field": field}


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (body(operationName=7), "operationName"),
        (body(operationName=""), "operationName"),
        (body(queueName=5), "queueName"),
        (body(queueName="  "), "queueName"),
        (body(saveLAR="yes"), "saveLAR"),
        (body(saveLAR=1), "saveLAR"),
        (body(email="to: someone"), "email"),
        (body(email=["a@x.example"]), "email"),
        (email(to=" , "), "email.to"),
        (email(to=[]), "email.to"),
        (email(to=["ok@x.example", 3]), "email.to[1]"),
        (email(to=["ok@x.example", " "]), "email.to[1]"),
        (email(**{"from": ["a@x.example"]}), "email.from"),
        (email(**{"from": ""}), "email.from"),
        (email(subject=1), "email.subject"),
        (email(body={"html": "x"}), "email.body"),
        (email(bodyAsPlainText=False), "email.bodyAsPlainText"),
        (email(mime=2), "email.mime"),
        (email(cc=5), "email.cc"),
        (email(bcc=[None]), "email.bcc[0]"),
    ],
)
def test_wrong_type_is_status_10_naming_the_field(data: dict[str, Any], field: str) -> None:
    parsed = parse(data)
    assert isinstance(parsed, Invalid)
    assert parsed.status_code == INVALID == 10
    assert parsed.field == field
    assert f"'{field}'" in parsed.message


@pytest.mark.parametrize("name", ["Reply", "Save", "Cancel", "send"])
def test_other_operation_names_pass_through(name: str) -> None:
    assert parse({"operationName": name, "anything": [1, 2]}) == Operation(name)


@pytest.mark.parametrize(
    "raw", [b"", b"{", b"not json", b"\xff\xfe", b'{"operationName": "Send",}']
)
def test_non_json_body_is_status_10(raw: bytes) -> None:
    parsed = parse_operation(raw)
    assert isinstance(parsed, Invalid)
    assert parsed.status_code == 10
    assert "not valid JSON" in parsed.message


@pytest.mark.parametrize("raw", [b"[]", b'"Send"', b"null", b"42", b'[{"operationName":"Send"}]'])
def test_non_object_body_is_status_10(raw: bytes) -> None:
    parsed = parse_operation(raw)
    assert isinstance(parsed, Invalid)
    assert parsed.status_code == 10
    assert "must be a JSON object" in parsed.message


def test_validate_send_takes_an_already_decoded_body() -> None:
    assert isinstance(validate_send(copy.deepcopy(GWS_SAMPLE)), SendRequest)
    invalid = validate_send({"operationName": "Send"})
    assert isinstance(invalid, Invalid)
    assert invalid.field == "queueName"


# -- properties --------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=25,
)
send_keys = st.sampled_from(
    ["operationName", "queueName", "email", "saveLAR", "to", "from", "cc", "bcc", "subject", "body"]
)


@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_raise(raw: bytes) -> None:
    assert isinstance(parse_operation(raw), SendRequest | Operation | Invalid)


@given(st.dictionaries(send_keys | st.text(max_size=8), json_values, max_size=6))
def test_arbitrary_json_objects_never_raise(data: dict[str, Any]) -> None:
    parsed = parse_operation(orjson.dumps(data))
    assert isinstance(parsed, SendRequest | Operation | Invalid)
    if isinstance(parsed, Invalid):
        assert parsed.status_code in (MISSING, INVALID)


@given(
    queue=st.text(max_size=10) | json_values,
    to=st.lists(st.text(max_size=10), max_size=3) | json_values,
    sender=st.text(max_size=10) | json_values,
    extra=st.dictionaries(send_keys, json_values, max_size=3),
)
def test_near_valid_sends_never_raise(
    queue: object, to: object, sender: object, extra: dict[str, Any]
) -> None:
    data = {
        "operationName": "Send",
        "queueName": queue,
        "email": {"to": to, "from": sender, **extra},
    }
    parsed = parse_operation(orjson.dumps(data))
    assert isinstance(parsed, SendRequest | Invalid)
    if isinstance(parsed, SendRequest):
        assert parsed.queue_name == queue
        assert parsed.to
        assert parsed.sender == sender


@pytest.mark.parametrize(
    ("to", "expected"),
    [
        ("qwerty@gplus-w2k3-gf80", ("qwerty@gplus-w2k3-gf80",)),
        ("a@x.example, b@x.example", ("a@x.example", "b@x.example")),
        (["a@x.example"], ("a@x.example",)),
    ],
)
def test_to_is_a_list_or_a_comma_separated_string(to: object, expected: tuple[str, ...]) -> None:
    parsed = parse(email(to=to))
    assert isinstance(parsed, SendRequest)
    assert parsed.to == expected


@pytest.mark.parametrize("save_lar", [True, False, "true", "false"])
def test_save_lar_is_a_boolean_or_its_text(save_lar: object) -> None:
    assert isinstance(parse(body(saveLAR=save_lar)), SendRequest)
