"""`core.tokens.TokenSigner`: the token is the HMAC-SHA256 of the decision id, cut to 128 bits,
so tokens handed out by one process (or release) verify in every other."""

from __future__ import annotations

import base64
import hashlib
import hmac

from core.tokens import TokenSigner


def _reference(key: bytes, decision_id: str) -> str:
    digest = hmac.new(key, decision_id.encode(), hashlib.sha256).digest()[:16]
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def test_tokens_are_the_truncated_hmac_sha256_of_the_decision_id() -> None:
    signer = TokenSigner(b"a ledger secret")
    ids = ["d1", "0190f3c2a7b84c7e9a1d2b3c4d5e6f70", "é" * 40, ""]
    for decision_id in ids * 2:  # signing twice gives the same token (the keyed state is reused)
        assert signer.sign(decision_id) == _reference(b"a ledger secret", decision_id)
        assert signer.verify(decision_id, _reference(b"a ledger secret", decision_id))
    assert not signer.verify("d1", _reference(b"another secret", "d1"))
    assert TokenSigner(b"k") == TokenSigner(b"k")
