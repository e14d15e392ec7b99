"""Tests for ivr.domain.request: parsing and validating verification requests."""

from __future__ import annotations

import contextlib
import json
import re
import string
from datetime import datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ivr.domain.outcome import iso
from ivr.domain.request import (
    MAX_CONTEXT_BYTES,
    MAX_EXPIRES_IN_S,
    MAX_REQUEST_BYTES,
    MAX_USER_CHARS,
    VerificationRequest,
    parse_request,
    peek_id,
)
from ivr.domain.users import normalise_user
from ivr.exceptions import RequestError

RID = "0b6d1e2a-1234-4abc-8def-0123456789ab"
NOW = 1_780_000_000.0
TTL = 120.0
MINIMAL: dict[str, Any] = {"id": RID, "user": "alice", "phone": "+12015550100"}


def parse(raw: str | bytes) -> VerificationRequest:
    return parse_request(raw, requested_at=NOW, default_ttl_s=TTL)


def parse_with(**fields: Any) -> VerificationRequest:
    """Parse MINIMAL updated with ``fields``."""
    return parse(json.dumps({**MINIMAL, **fields}))


def rejection(raw: str | bytes) -> str:
    """The detail of the RequestError that parsing ``raw`` raises."""
    with pytest.raises(RequestError) as ei:
        parse(raw)
    return ei.value.detail


def rejection_with(**fields: Any) -> str:
    return rejection(json.dumps({**MINIMAL, **fields}))


def epoch(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


class TestValid:
    def test_minimal(self) -> None:
        """id, user and phone suffice; everything else takes its default."""
        req = parse(json.dumps(MINIMAL))

        assert req == VerificationRequest(
            id=RID,
            user="alice",
            number="+12015550100",
            extension="",
            mode="standard",
            lang="en",
            requested_at=NOW,
            expires_at=NOW + TTL,
            context={},
        )
        assert req.phone == "+12015550100"

    def test_bytes(self) -> None:
        """The raw request may be bytes, as read from Redis."""
        assert parse(json.dumps(MINIMAL).encode()).id == RID

    def test_id_lowercased(self) -> None:
        """An upper-case UUID is accepted and normalised to lower case."""
        assert parse_with(id=RID.upper()).id == RID

    def test_phone_with_extension(self) -> None:
        """'x' splits the phone into the E.164 number and the extension digits."""
        req = parse_with(phone="+12015550100x1234")

        assert (req.number, req.extension) == ("+12015550100", "1234")
        assert req.phone == "+12015550100x1234"

    @pytest.mark.parametrize("phone", ["+1555010", "+123456789012345"])
    def test_phone_length_limits(self, phone: str) -> None:
        """E.164 numbers of 7 to 15 digits are accepted."""
        assert parse_with(phone=phone).number == phone

    def test_full_request(self) -> None:
        """Every optional field is taken as given."""
        req = parse_with(
            mode="standard",
            lang="fr-CA",
            expires_at="2026-05-28T20:56:40Z",
            context={"ip": "192.0.2.1", "n": [1, 2]},
        )

        assert req.mode == "standard"
        assert req.lang == "fr-CA"
        assert req.expires_at == NOW + 1800
        assert req.context == {"ip": "192.0.2.1", "n": [1, 2]}

    @pytest.mark.parametrize("lang", [None, "en"])
    def test_default_lang(self, lang: str | None) -> None:
        """A missing or null lang is English."""
        fields = {} if lang is None else {"lang": lang}
        assert parse_with(**fields).lang == "en"

    @pytest.mark.parametrize("lang", ["de", "fil", "fr-CA", "pt_BR", "zh-Hant"])
    def test_language_tags(self, lang: str) -> None:
        """Language tags with an optional region or script subtag are accepted."""
        assert parse_with(lang=lang).lang == lang

    def test_default_expires_at(self) -> None:
        """Without expires_at the deadline is requested_at plus the default TTL."""
        req = parse_request(json.dumps(MINIMAL), requested_at=1000.5, default_ttl_s=30)

        assert req.requested_at == 1000.5
        assert req.expires_at == 1030.5

    def test_null_expires_at_is_default(self) -> None:
        """expires_at null means the default TTL."""
        assert parse_with(expires_at=None).expires_at == NOW + TTL

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("2030-01-01T00:00:00Z", "2030-01-01T00:00:00+00:00"),
            ("2030-01-01T00:00:00.250Z", "2030-01-01T00:00:00.250+00:00"),
            ("2030-01-01T01:00:00+01:00", "2030-01-01T00:00:00+00:00"),
            ("2029-12-31T19:00:00-05:00", "2030-01-01T00:00:00+00:00"),
            ("2030-01-01T05:30:00+05:30", "2030-01-01T00:00:00+00:00"),
        ],
    )
    def test_expires_at_with_zone(self, text: str, expected: str) -> None:
        """ISO 8601 with Z or an offset is converted to epoch seconds."""
        req = parse_request(json.dumps({**MINIMAL, "expires_at": text}),
                            requested_at=epoch(expected) - 60, default_ttl_s=TTL)
        assert req.expires_at == epoch(expected)

    def test_null_context_is_empty(self) -> None:
        """context null is an empty context."""
        assert parse_with(context=None).context == {}

    def test_context_at_size_limit(self) -> None:
        """A context whose JSON is exactly the limit is accepted."""
        context = {"k": "x" * (MAX_CONTEXT_BYTES - len(json.dumps({"k": ""})))}
        assert len(json.dumps(context)) == MAX_CONTEXT_BYTES

        assert parse_with(context=context).context == context

    def test_request_at_size_limit(self) -> None:
        """A request of exactly MAX_REQUEST_BYTES is accepted."""
        raw = json.dumps(MINIMAL).encode()
        raw += b" " * (MAX_REQUEST_BYTES - len(raw))

        assert parse(raw).id == RID

    @pytest.mark.parametrize("user", ["Alice", "ALICE", "\uff21\uff4c\uff49\uff43\uff45"])
    def test_user_normalised(self, user: str) -> None:
        """The request's user, and so every per-user key, is the normalised name."""
        assert parse_with(user=user).user == "alice"

    def test_user_at_length_limit(self) -> None:
        """A user of MAX_USER_CHARS printable characters, non-ASCII included, is accepted."""
        user = "é" * MAX_USER_CHARS
        assert parse_with(user=user).user == user


class TestRejected:
    @pytest.mark.parametrize("raw", [b"", b"{", b"not json", b"\xff\xfe\x00", "{'id': 1}"])
    def test_not_json(self, raw: str | bytes) -> None:
        """Anything that is not JSON is invalid_json."""
        assert rejection(raw) == "invalid_json"

    @pytest.mark.parametrize("raw", ["[]", json.dumps([MINIMAL]), '"text"', "42", "null"])
    def test_not_an_object(self, raw: str) -> None:
        """JSON that is not an object (an array, a string...) is invalid_json."""
        assert rejection(raw) == "invalid_json"

    def test_unknown_field(self) -> None:
        """A field outside the contract is refused, and named in the message."""
        with pytest.raises(RequestError) as ei:
            parse_with(callback="http://example.invalid/")

        assert ei.value.detail == "unknown_field"
        assert "callback" in ei.value.message

    @pytest.mark.parametrize(
        "rid",
        [
            None,
            42,
            "",
            "not-a-uuid",
            RID[:-1],
            RID + "0",
            RID.replace("-", ""),
            "{" + RID + "}",
            RID + "\n",
            "0b6d1e2g-1234-4abc-8def-0123456789ab",
        ],
    )
    def test_bad_id(self, rid: object) -> None:
        """The id must be a UUID in its canonical dashed form."""
        assert rejection_with(id=rid) == "invalid_id"

    def test_missing_id(self) -> None:
        """A request without an id is invalid_id."""
        assert rejection(json.dumps({"user": "alice", "phone": "+12015550100"})) == "invalid_id"

    @pytest.mark.parametrize(
        "user",
        [
            "",
            "a" * (MAX_USER_CHARS + 1),
            "ali\nce",
            "ali\rce",
            "alice\x00",
            "\x1b[31malice",
            "ali\u200bce",  # zero-width space (Cf)
            "ali\u2028ce",  # line separator (Zl)
            "ali\u00a0ce",  # no-break space (Zs)
            " alice",
            None,
            42,
            ["alice"],
        ],
    )
    def test_bad_user(self, user: object) -> None:
        """user must be 1 to 128 characters, none of them control or format characters."""
        assert rejection_with(user=user) == "invalid_user"

    @pytest.mark.parametrize(
        "phone",
        [
            "+1555abc0100",
            "+1555\r\n0100",
            "+12015550100\n",
            "",
            "+" + "1" * 40,
            "+1234567890123456",  # 16 digits
            "+123456",  # 6 digits
            "12015550100",
            "+015550100",
            "+1 555 0100",
            " +12015550100",
            "+12015550100 ",
            "+1555-0100",
            "+12015550100x",
            "+12015550100x12345678901",
            "+12015550100x12a",
            "+12015550100;x=1",
            "+1555\uff10100",  # full-width digit zero
            "+\u0661\u0665\u0665\u0665\u0660\u0661\u0660\u0660",  # Arabic-Indic digits
            12015550100,
            None,
        ],
    )
    def test_bad_phone(self, phone: object) -> None:
        """phone must be '+', 7-15 digits without a leading 0, and optionally 'x' digits."""
        assert rejection_with(phone=phone) == "invalid_phone"

    @pytest.mark.parametrize("mode", ["", "fast", "Standard", "standard\n", 1])
    def test_bad_mode(self, mode: object) -> None:
        """mode must be one of the supported modes."""
        assert rejection_with(mode=mode) == "unsupported_mode"

    @pytest.mark.parametrize(
        "lang", ["e", "english", "EN", "en-", "en-US-x", "en\n", "en;", "fr-C", 5, ["en"]]
    )
    def test_bad_lang(self, lang: object) -> None:
        """lang must be a short language tag."""
        assert rejection_with(lang=lang) == "invalid_lang"

    @pytest.mark.parametrize(
        "expires_at",
        [
            "2030-01-01T00:00:00",
            "2030-01-01",
            "tomorrow",
            "",
            1_900_000_000,
            ["2030-01-01T00:00:00Z"],
            {"at": "2030-01-01T00:00:00Z"},
        ],
    )
    def test_bad_expires_at(self, expires_at: object) -> None:
        """expires_at must be an ISO 8601 string with a time zone; naive times are refused."""
        assert rejection_with(expires_at=expires_at) == "invalid_expires_at"

    def test_expires_at_at_most_an_hour_away(self) -> None:
        """A request may wait at most MAX_EXPIRES_IN_S to be placed: a day-long expires_at
        would outlive its lock and its outcome's key."""
        assert parse_with(expires_at=iso(NOW + MAX_EXPIRES_IN_S)).expires_at == (
            NOW + MAX_EXPIRES_IN_S)
        assert rejection_with(expires_at=iso(NOW + MAX_EXPIRES_IN_S + 1)) == (
            "invalid_expires_at")
        assert rejection_with(expires_at="2030-01-01T00:00:00Z") == "invalid_expires_at"

    @pytest.mark.parametrize("context", ["text", [1, 2], 42, True])
    def test_context_not_object(self, context: object) -> None:
        """context must be a JSON object."""
        assert rejection_with(context=context) == "invalid_context"

    @pytest.mark.parametrize("context", [[], "", 0, False])
    def test_falsy_context_not_object(self, context: object) -> None:
        """An empty array or other falsy non-object is not a JSON object either."""
        assert rejection_with(context=context) == "invalid_context"

    def test_context_too_big(self) -> None:
        """A context whose JSON is over MAX_CONTEXT_BYTES is refused."""
        context = {"k": "x" * (MAX_CONTEXT_BYTES - len(json.dumps({"k": ""})) + 1)}

        assert rejection_with(context=context) == "invalid_context"

    def test_too_large(self) -> None:
        """A request over MAX_REQUEST_BYTES is refused before it is parsed."""
        raw = json.dumps(MINIMAL).encode()
        raw += b" " * (MAX_REQUEST_BYTES + 1 - len(raw))

        assert rejection(raw) == "too_large"

    def test_too_large_is_checked_first(self) -> None:
        """Size comes first: even non-JSON is too_large when big."""
        assert rejection(b"x" * (MAX_REQUEST_BYTES + 1)) == "too_large"

    def test_error_carries_message(self) -> None:
        """RequestError has a human message besides the one-word detail."""
        with pytest.raises(RequestError) as ei:
            parse_with(phone="nope")

        assert ei.value.message
        assert str(ei.value) == ei.value.message

    @pytest.mark.parametrize("mode", [["standard"], {"standard": 1}])
    def test_unhashable_mode(self, mode: object) -> None:
        """A list or object as mode is rejected like any other bad mode, not a crash."""
        assert rejection_with(mode=mode) == "unsupported_mode"

    @pytest.mark.parametrize("raw", [b"[" * 5000, b'{"a":' * 1500])
    def test_deeply_nested_json(self, raw: bytes) -> None:
        """A deeply nested request (under the size limit) is invalid_json, not a crash."""
        assert len(raw) <= MAX_REQUEST_BYTES
        assert rejection(raw) == "invalid_json"


class TestPeekId:
    def test_valid_request(self) -> None:
        """The id of a request is found."""
        assert peek_id(json.dumps(MINIMAL)) == RID

    def test_id_of_otherwise_bad_request(self) -> None:
        """A request that fails validation still yields its id, for the rejected outcome."""
        raw = json.dumps({"id": RID, "phone": "bogus", "extra": 1}).encode()

        assert peek_id(raw) == RID

    def test_uuid_lowercased(self) -> None:
        """An upper-case UUID is lowercased, as parse_request would."""
        assert peek_id(json.dumps({"id": RID.upper()})) == RID

    def test_non_uuid_printable_id_kept(self) -> None:
        """A printable id that is not a UUID is returned as written."""
        assert peek_id(json.dumps({"id": "Order-42"})) == "Order-42"

    @pytest.mark.parametrize(
        "raw",
        [
            b"",
            b"not json",
            b"\xff",
            b"[]",
            json.dumps([{"id": RID}]),
            json.dumps({"user": "alice"}),
            json.dumps({"id": 42}),
            json.dumps({"id": None}),
            json.dumps({"id": ""}),
            json.dumps({"id": "x" * 129}),
            json.dumps({"id": "a\nb"}),
            json.dumps({"id": "a\x00b"}),
        ],
    )
    def test_no_usable_id(self, raw: str | bytes) -> None:
        """No id is found in non-JSON, non-objects, or ids that are not short printable text."""
        assert peek_id(raw) is None

    def test_id_at_length_limit(self) -> None:
        """A 128-character id is still returned."""
        assert peek_id(json.dumps({"id": "x" * 128})) == "x" * 128

    def test_deeply_nested_json(self) -> None:
        """Deeply nested JSON has no id; it does not crash."""
        assert peek_id(b"[" * 5000) is None

    def test_oversized_request_with_leading_uuid_id(self) -> None:
        """Over MAX_REQUEST_BYTES, a leading UUID id is read from the first bytes only."""
        raw = json.dumps({"id": RID.upper(), "context": {"pad": "x" * MAX_REQUEST_BYTES}})

        assert peek_id(raw) == RID
        assert peek_id(raw.encode()) == RID

    @pytest.mark.parametrize("raw", [
        json.dumps({"context": {"pad": "x" * MAX_REQUEST_BYTES}, "id": RID}),
        json.dumps({"id": "Order-42", "pad": "x" * MAX_REQUEST_BYTES}),
        b"\xff" * (MAX_REQUEST_BYTES + 1),
    ])
    def test_oversized_request_without_leading_uuid_id(self, raw: str | bytes) -> None:
        """An oversized request is never parsed: an id later in it, or not a UUID, is not
        found (the request is dead-lettered, cut short)."""
        assert peek_id(raw) is None


# --- properties ---

# Characters that may reach an AMI header or a dial string.
SAFE_CHARS = frozenset(string.ascii_letters + string.digits + "+-_")
INJECTION_CHARS = frozenset("\r\n;,&|")

UUID_RE = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
PHONE_RE = r"\+[1-9][0-9]{6,14}(x[0-9]{1,10})?"
LANG_RE = r"[a-z]{2,3}([-_][A-Za-z0-9]{2,8})?"


def near(valid: str, pattern: str) -> st.SearchStrategy[str]:
    """A valid value, arbitrary text, or text around something that matches ``pattern``."""
    return st.one_of(
        st.just(valid), st.text(), st.from_regex(pattern, fullmatch=False), st.text(max_size=3)
    )


VALID: dict[str, st.SearchStrategy[Any]] = {
    "id": st.from_regex(UUID_RE, fullmatch=True),
    "user": st.just("alice"),
    "phone": st.from_regex(PHONE_RE, fullmatch=True),
    "mode": st.just("standard"),
    "lang": st.from_regex(LANG_RE, fullmatch=True),
    "expires_at": st.just("2026-05-28T20:56:40Z"),
    "context": st.just({}),
}
FUZZED: dict[str, st.SearchStrategy[Any]] = {
    "id": near(RID, UUID_RE),
    "user": st.text(),
    "phone": near("+12015550100x1234", PHONE_RE),
    "mode": st.text(),
    "lang": near("fr-CA", LANG_RE),
    "expires_at": st.text(),
    "context": st.dictionaries(st.text(), st.text(), max_size=3),
}


@st.composite
def one_field_fuzzed(draw: st.DrawFn) -> dict[str, Any]:
    """A valid request with one field replaced by arbitrary (often hostile) text."""
    fields = draw(st.fixed_dictionaries(VALID))
    name = draw(st.sampled_from(sorted(FUZZED)))
    fields[name] = draw(FUZZED[name])
    return fields


request_fields = st.one_of(
    one_field_fuzzed(),
    st.fixed_dictionaries(
        {k: st.one_of(VALID[k], FUZZED[k]) for k in ("id", "user", "phone")},
        optional={k: st.one_of(VALID[k], FUZZED[k]) for k in ("mode", "lang", "expires_at")},
    ),
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(), children, max_size=3)
    ),
    max_leaves=8,
)
json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()


def assert_header_safe(req: VerificationRequest) -> None:
    for name in ("number", "extension", "id", "lang", "mode"):
        value = getattr(req, name)
        assert set(value) <= SAFE_CHARS, (name, value)
        assert not set(value) & INJECTION_CHARS, (name, value)
    assert re.fullmatch(r"\+[1-9][0-9]{6,14}", req.number)
    assert re.fullmatch(r"[0-9]{0,10}", req.extension)
    assert re.fullmatch(r"[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}", req.id)


class TestProperties:
    @settings(max_examples=200, deadline=None)
    @given(fields=request_fields)
    def test_arbitrary_text_fields_are_refused_or_header_safe(self, fields: dict[str, Any]) -> None:
        """Whatever text is in any field, a parsed request carries only header-safe values."""
        try:
            req = parse(json.dumps(fields))
        except RequestError:
            return
        assert_header_safe(req)
        assert req.user == normalise_user(fields["user"])

    @settings(max_examples=200, deadline=None)
    @given(raw=st.binary(max_size=512))
    def test_arbitrary_bytes_raise_only_request_error(self, raw: bytes) -> None:
        """Random bytes are either a request or a RequestError, never another exception."""
        with contextlib.suppress(RequestError):
            parse(raw)

    @settings(max_examples=200, deadline=None)
    @given(raw=st.text(max_size=512))
    def test_arbitrary_text_raises_only_request_error(self, raw: str) -> None:
        """Random text is either a request or a RequestError, never another exception."""
        with contextlib.suppress(RequestError):
            parse(raw)

    @settings(max_examples=200, deadline=None)
    @given(
        fields=st.dictionaries(
            st.sampled_from(["id", "user", "phone", "lang", "expires_at", "context"]),
            json_values,
        ),
        mode=st.one_of(st.just("standard"), json_scalars),  # lists/dicts: test_unhashable_mode
    )
    def test_arbitrary_json_fields_raise_only_request_error(
        self, fields: dict[str, Any], mode: object
    ) -> None:
        """Any JSON value in any field gives a request or a RequestError, never a crash."""
        try:
            req = parse(json.dumps({**MINIMAL, **fields, "mode": mode}))
        except RequestError:
            return
        assert_header_safe(req)

    @settings(max_examples=200, deadline=None)
    @given(raw=st.one_of(st.binary(max_size=256), st.text(max_size=256)))
    def test_peek_id_never_raises(self, raw: str | bytes) -> None:
        """peek_id returns a short printable string or None for any input."""
        rid = peek_id(raw)

        assert rid is None or (0 < len(rid) <= 128 and rid.isprintable())

    @given(fields=request_fields)
    def test_peek_id_agrees_with_parse(self, fields: dict[str, Any]) -> None:
        """For every request that parses, peek_id finds the same id."""
        raw = json.dumps(fields)
        try:
            req = parse(raw)
        except RequestError:
            return
        assert peek_id(raw) == req.id


def _scrypt_hash(code: str, *, salt_len: int = 16, dklen: int = 32, log2_n: int = 10) -> str:
    """A match_hash made the way a client in another language might make it."""
    import base64
    import hashlib

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    salt = bytes(range(salt_len))
    digest = hashlib.scrypt(code.encode(), salt=salt, n=1 << log2_n, r=8, p=1, dklen=dklen)
    return f"scrypt${log2_n}$8$1${b64(salt)}${b64(digest)}"


class TestMatchHash:
    """The lengths docs/contract.md states: salt 16 to 32 bytes, hash exactly 32 bytes."""

    @pytest.mark.parametrize("salt_len", [16, 24, 32])
    def test_valid_lengths(self, salt_len: int) -> None:
        req = parse_with(mode="match", match_hash=_scrypt_hash("37", salt_len=salt_len))
        assert req.match_hash.startswith("scrypt$10$8$1$")

    @pytest.mark.parametrize("dklen", [16, 24, 31, 33, 48, 64])
    def test_hash_not_32_bytes_is_rejected(self, dklen: int) -> None:
        """dklen 64 passed before and then never matched: the call ended denied."""
        assert rejection_with(mode="match",
                              match_hash=_scrypt_hash("37", dklen=dklen)) == "invalid_match_hash"

    @pytest.mark.parametrize("salt_len", [8, 12, 15, 33, 48])
    def test_salt_out_of_range_is_rejected(self, salt_len: int) -> None:
        assert rejection_with(mode="match", match_hash=_scrypt_hash(
            "37", salt_len=salt_len)) == "invalid_match_hash"

    def test_impossible_base64_length_is_rejected(self) -> None:
        """No byte string encodes to 4k+1 base64 characters."""
        good = _scrypt_hash("37", salt_len=16).split("$")
        good[4] = good[4] + "A" * 3  # 25 characters: not a length base64 produces
        assert rejection_with(mode="match", match_hash="$".join(good)) == "invalid_match_hash"
