"""JWT tokens of the wire contract: issued by the simulator, checked by wsproxy.

A token is ``HS256`` (or the configured HMAC algorithm) over ``JWT_SECRET`` with
claims ``session_id`` (string) and ``iat`` (integer seconds); ``exp`` only when a
TTL is configured.  PyJWT checks that required claims are *present*, not what
type they are, so :func:`verify_token` checks types and values itself.

Nothing here logs, and no error message carries any part of a token: a
failure is reported by a short, fixed reason code (``AuthError.reason``).
"""

from __future__ import annotations

import time

import jwt

__all__ = ["AuthError", "IAT_LEEWAY_SECONDS", "issue_token", "verify_token", "bearer_token"]

#: how far in the future an ``iat`` may lie (clock skew between hosts)
IAT_LEEWAY_SECONDS = 5

#: base64url length (unpadded) of each HMAC algorithm's signature
_SIGNATURE_CHARS = {"HS256": 43, "HS384": 64, "HS512": 86}

_REQUIRED = ("session_id", "iat")


class AuthError(Exception):
    """A token was refused.  ``reason`` is a fixed code safe to log and count."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def issue_token(
    secret: str,
    session_id: str,
    *,
    algorithm: str = "HS256",
    ttl_seconds: int | None = None,
    now: float | None = None,
) -> str:
    iat = int(time.time() if now is None else now)
    claims: dict[str, object] = {"session_id": session_id, "iat": iat}
    if ttl_seconds:
        claims["exp"] = iat + int(ttl_seconds)
    return jwt.encode(claims, secret, algorithm=algorithm)


def bearer_token(header_value: str | None, *, max_bytes: int) -> str:
    """Extract the token from an ``Authorization: Bearer <jwt>`` header value."""
    if header_value is None or header_value == "":
        raise AuthError("missing")
    # characters first (cheap, bounds the encode), then bytes: a header decoded with
    # surrogateescape or holding multi-byte characters is longer in bytes than in characters
    if len(header_value) > max_bytes or len(header_value.encode("utf-8", "surrogatepass")) > max_bytes:
        raise AuthError("too_large")
    scheme, _, token = header_value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError("malformed")
    return token.strip()


def verify_token(
    token: str,
    *,
    secret: str,
    session_id: str,
    algorithm: str = "HS256",
    now: float | None = None,
) -> dict:
    """Return the claims of *token* if it grants access to *session_id*, else raise AuthError."""
    if not token.isascii():
        # a JWT is base64url and dots; header bytes that are not ASCII (even not UTF-8: they arrive
        # surrogate-escaped) would make PyJWT's own encode raise UnicodeEncodeError
        raise AuthError("malformed")
    if token.count(".") != 2:
        raise AuthError("malformed")
    signature = token.rpartition(".")[2]
    if len(signature) != _SIGNATURE_CHARS.get(algorithm, -1):
        # the wrong length for this algorithm: a bad signature, whatever its base64 would decode to
        # (PyJWT's parser would call it malformed or not depending on the bytes)
        try:
            header = jwt.get_unverified_header(token.rpartition(".")[0] + ".")
        except jwt.PyJWTError:
            raise AuthError("malformed") from None
        raise AuthError("bad_algorithm" if header.get("alg") != algorithm else "bad_signature")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise AuthError("malformed") from None
    if header.get("alg") != algorithm:
        raise AuthError("bad_algorithm")
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[algorithm],
            options={"require": list(_REQUIRED), "verify_iat": False},
        )
    except jwt.ExpiredSignatureError:
        raise AuthError("expired") from None
    except jwt.InvalidSignatureError:
        raise AuthError("bad_signature") from None
    except jwt.MissingRequiredClaimError:
        raise AuthError("missing_claim") from None
    except jwt.PyJWTError:
        raise AuthError("malformed") from None
    sid = claims.get("session_id")
    if not isinstance(sid, str):
        raise AuthError("bad_claim_type")
    iat = claims.get("iat")
    if type(iat) is not int:  # bool is an int subclass; floats and strings are refused
        raise AuthError("bad_claim_type")
    current = time.time() if now is None else now
    if iat > current + IAT_LEEWAY_SECONDS:
        raise AuthError("future_iat")
    if sid != session_id:
        raise AuthError("session_mismatch")
    return claims
