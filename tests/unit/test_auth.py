"""kit.auth: tokens the wsproxy must accept, and a battery of hostile ones it must refuse.

``HOSTILE_TOKENS`` is shared with tests/integration/test_wsproxy_auth.py, which
sends each one to a real wsproxy.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import jwt
import pytest

from kit.auth import IAT_LEEWAY_SECONDS, AuthError, bearer_token, issue_token, verify_token

SECRET = "s" * 48
SESSION = "0123456789abcdef0123456789abcdef"
OTHER_SESSION = "fedcba9876543210fedcba9876543210"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(
    claims: object,
    *,
    header: dict | None = None,
    secret: str = SECRET,
    alg: str = "HS256",
    signature: str | None = None,
) -> str:
    """Build a JWT by hand, so that nothing a library refuses to produce is out of reach."""
    head = {"alg": alg, "typ": "JWT"} if header is None else header
    signing_input = f"{_b64(json.dumps(head).encode())}.{_b64(json.dumps(claims).encode())}"
    if signature is None:
        digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}.get(alg, hashlib.sha256)
        signature = _b64(hmac.new(secret.encode(), signing_input.encode(), digest).digest())
    return f"{signing_input}.{signature}"


def _now() -> int:
    return int(time.time())


def hostile_tokens(session_id: str = SESSION, secret: str = SECRET) -> dict[str, tuple[str, str]]:
    """name -> (token, expected reason code); every one must be refused for *session_id*."""
    now = _now()
    good = {"session_id": session_id, "iat": now}
    return {
        "alg_none": (forge(good, header={"alg": "none", "typ": "JWT"}, signature=""), "bad_algorithm"),
        "alg_none_signed": (forge(good, header={"alg": "none"}), "bad_algorithm"),
        "alg_missing": (forge(good, header={"typ": "JWT"}), "bad_algorithm"),
        "hs512_header": (forge(good, alg="HS512", secret=secret), "bad_algorithm"),
        "rs256_header": (
            forge(good, header={"alg": "RS256", "typ": "JWT"}, signature=_b64(b"x" * 256)),
            "bad_algorithm",
        ),
        "empty_signature": (forge(good, signature=""), "bad_signature"),
        "wrong_secret": (forge(good, secret="w" * 48), "bad_signature"),
        "truncated_signature": (forge(good)[:-4], "bad_signature"),
        "missing_session_id": (forge({"iat": now}), "missing_claim"),
        "missing_iat": (forge({"session_id": session_id}), "missing_claim"),
        "empty_claims": (forge({}), "missing_claim"),
        "null_session_id": (forge({"session_id": None, "iat": now}), "missing_claim"),
        "null_iat": (forge({"session_id": session_id, "iat": None}), "missing_claim"),
        "claims_null": (forge(None), "malformed"),
        "claims_list": (forge([session_id, now]), "malformed"),
        "session_id_int": (forge({"session_id": 12345, "iat": now}), "bad_claim_type"),
        "session_id_list": (forge({"session_id": [session_id], "iat": now}), "bad_claim_type"),
        "iat_string": (forge({"session_id": session_id, "iat": str(now)}), "bad_claim_type"),
        "iat_float": (forge({"session_id": session_id, "iat": now + 0.5}), "bad_claim_type"),
        "iat_bool": (forge({"session_id": session_id, "iat": True}), "bad_claim_type"),
        "future_iat": (forge({"session_id": session_id, "iat": now + 3600}), "future_iat"),
        "expired": (forge({"session_id": session_id, "iat": now - 100, "exp": now - 50}), "expired"),
        "other_session": (forge({"session_id": OTHER_SESSION, "iat": now}), "session_mismatch"),
        "two_segments": ("abc.def", "malformed"),
        "four_segments": (forge(good) + ".x", "malformed"),
        "garbage_base64": ("!!!.???.***", "malformed"),
        "header_not_json": (f"{_b64(b'not json')}.{_b64(b'{}')}.{_b64(b'sig')}", "malformed"),
    }


HOSTILE_NAMES = sorted(hostile_tokens())


class TestVerifyToken:
    def test_issued_token_is_accepted_for_its_session(self) -> None:
        token = issue_token(SECRET, SESSION)
        claims = verify_token(token, secret=SECRET, session_id=SESSION)
        assert claims["session_id"] == SESSION
        assert type(claims["iat"]) is int

    @pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
    def test_configured_algorithm_is_accepted(self, alg: str) -> None:
        secret = "k" * 64
        token = issue_token(secret, SESSION, algorithm=alg)
        assert verify_token(token, secret=secret, session_id=SESSION, algorithm=alg)["session_id"] == SESSION

    def test_token_with_ttl_is_accepted_before_expiry(self) -> None:
        token = issue_token(SECRET, SESSION, ttl_seconds=60)
        assert verify_token(token, secret=SECRET, session_id=SESSION)["exp"] > _now()

    def test_iat_within_clock_skew_leeway_is_accepted(self) -> None:
        token = forge({"session_id": SESSION, "iat": _now() + IAT_LEEWAY_SECONDS - 1})
        assert verify_token(token, secret=SECRET, session_id=SESSION)

    def test_hs256_token_is_refused_when_hs512_is_configured(self) -> None:
        token = issue_token(SECRET, SESSION)
        with pytest.raises(AuthError) as info:
            verify_token(token, secret=SECRET, session_id=SESSION, algorithm="HS512")
        assert info.value.reason == "bad_algorithm"

    @pytest.mark.parametrize("name", HOSTILE_NAMES)
    def test_hostile_token_is_refused_with_its_reason(self, name: str) -> None:
        token, reason = hostile_tokens()[name]
        with pytest.raises(AuthError) as info:
            verify_token(token, secret=SECRET, session_id=SESSION)
        assert info.value.reason == reason

    @pytest.mark.parametrize("name", HOSTILE_NAMES)
    def test_refusal_message_carries_no_part_of_the_token(self, name: str) -> None:
        token, _ = hostile_tokens()[name]
        with pytest.raises(AuthError) as info:
            verify_token(token, secret=SECRET, session_id=SESSION)
        text = str(info.value) + repr(info.value)
        for part in token.split("."):
            if len(part) >= 4:
                assert part not in text


def _as_aiohttp_decodes(raw: bytes) -> str:
    """A header value as aiohttp hands it over: UTF-8, bytes that are not UTF-8 surrogate-escaped."""
    return raw.decode("utf-8", "surrogateescape")


class TestNonAsciiToken:
    """Header bytes that are not ASCII are refused as malformed, never an exception of PyJWT's."""

    @pytest.mark.parametrize(
        "raw",
        [b"\xff\xfe.a." + b"b" * 43, b"\xff\xfe.a.bbbb", b"a.b." + b"\xc3" * 43, ("\u00e9.a." + "b" * 42).encode()],
        ids=["not_utf8_hs256_length", "not_utf8_short", "lone_lead_bytes", "utf8_e_acute"],
    )
    def test_token_that_is_not_ascii_is_malformed(self, raw: bytes) -> None:
        token = bearer_token(_as_aiohttp_decodes(b"Bearer " + raw), max_bytes=4096)
        with pytest.raises(AuthError) as info:
            verify_token(token, secret=SECRET, session_id=SESSION)
        assert info.value.reason == "malformed"
        assert "\udcff" not in str(info.value) and "bbbb" not in str(info.value)

    def test_good_token_with_a_non_ascii_character_appended_is_malformed(self) -> None:
        token = issue_token(SECRET, SESSION) + _as_aiohttp_decodes(b"\xff")
        with pytest.raises(AuthError) as info:
            verify_token(token, secret=SECRET, session_id=SESSION)
        assert info.value.reason == "malformed"


class TestBearerToken:
    def test_bearer_scheme_yields_the_token(self) -> None:
        assert bearer_token("Bearer a.b.c", max_bytes=4096) == "a.b.c"

    def test_scheme_is_case_insensitive_and_spaces_are_trimmed(self) -> None:
        assert bearer_token("bearer   a.b.c  ", max_bytes=4096) == "a.b.c"

    @pytest.mark.parametrize("value", [None, ""])
    def test_missing_header_is_refused(self, value: str | None) -> None:
        with pytest.raises(AuthError) as info:
            bearer_token(value, max_bytes=4096)
        assert info.value.reason == "missing"

    @pytest.mark.parametrize(
        "value", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer    ", "Token a.b.c", "a.b.c", "Bearer\ta.b.c"]
    )
    def test_non_bearer_or_empty_value_is_malformed(self, value: str) -> None:
        with pytest.raises(AuthError) as info:
            bearer_token(value, max_bytes=4096)
        assert info.value.reason == "malformed"

    def test_one_megabyte_header_is_refused_as_too_large(self) -> None:
        with pytest.raises(AuthError) as info:
            bearer_token("Bearer " + "a" * (1024 * 1024), max_bytes=4096)
        assert info.value.reason == "too_large"

    def test_cap_counts_bytes_not_characters(self) -> None:
        value = "Bearer " + "\u00e9" * 3000  # 3000 characters, 6000 UTF-8 bytes
        with pytest.raises(AuthError) as info:
            bearer_token(value, max_bytes=4096)
        assert info.value.reason == "too_large"

    def test_header_at_the_cap_is_not_refused_for_size(self) -> None:
        value = "Bearer " + "a" * (4096 - 7)
        assert bearer_token(value, max_bytes=4096) == "a" * (4096 - 7)


def test_pyjwt_still_refuses_alg_none_on_its_own() -> None:
    """Belt and braces: even without our header check, PyJWT must not accept 'none'."""
    token = forge({"session_id": SESSION, "iat": _now()}, header={"alg": "none"}, signature="")
    with pytest.raises(jwt.PyJWTError):
        jwt.decode(token, SECRET, algorithms=["HS256"])
