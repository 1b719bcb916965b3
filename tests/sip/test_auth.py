"""Digest authentication: RFC 2617 / RFC 7616 vectors and the client's nonce/stale logic."""

from __future__ import annotations

import random

import pytest

from sipclient.sip.auth import (
    AuthError,
    Challenge,
    DigestClient,
    DigestCredentials,
    DigestMemory,
    digest_response,
    format_authorization,
    parse_auth_header,
    parse_challenges,
)
from sipclient.sip.message import Headers, Request, Response

MUFASA_2617 = DigestCredentials("Mufasa", "Circle Of Life")
MUFASA_7616 = DigestCredentials("Mufasa", "Circle of Life")
NONCE_7616 = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
CNONCE_7616 = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"
OPAQUE_7616 = "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"


def test_rfc2617_section_3_5_vector() -> None:
    ch = Challenge(
        realm="testrealm@host.com",
        nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
        opaque="5ccc069c403ebaf9f0171e9517f40e41",
        qop=("auth", "auth-int"),
    )
    got = digest_response(
        ch, MUFASA_2617, "GET", "/dir/index.html", qop="auth", nc=1, cnonce="0a4f113b"
    )
    assert got == "6629fae49393a05397450978507c4ef1"


@pytest.mark.parametrize(
    ("algorithm", "expected"),
    [
        ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
        ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
    ],
)
def test_rfc7616_section_3_9_1_vectors(algorithm: str, expected: str) -> None:
    ch = Challenge(
        realm="http-auth@example.org",
        nonce=NONCE_7616,
        opaque=OPAQUE_7616,
        algorithm=algorithm,
        qop=("auth", "auth-int"),
    )
    got = digest_response(
        ch, MUFASA_7616, "GET", "/dir/index.html", qop="auth", nc=1, cnonce=CNONCE_7616
    )
    assert got == expected
    header = format_authorization(
        ch, MUFASA_7616, "GET", "/dir/index.html", nc=1, cnonce=CNONCE_7616
    )
    parsed = dict(parse_auth_header(header)[0][1])
    assert parsed["response"] == expected
    assert parsed["nc"] == "00000001" and parsed["qop"] == "auth"
    assert parsed["opaque"] == OPAQUE_7616 and parsed["algorithm"] == algorithm
    assert header.startswith('Digest username="Mufasa", realm="http-auth@example.org"')


def test_no_qop_and_sess_and_auth_int() -> None:
    # RFC 2069 style (no qop): response = H(HA1:nonce:HA2); computed independently here
    import hashlib

    def md5(s: str) -> str:
        return hashlib.md5(s.encode()).hexdigest()

    ch = Challenge(realm="r", nonce="n")
    ha1, ha2 = md5("u:r:p"), md5("REGISTER:sip:pbx")
    creds = DigestCredentials("u", "p")
    assert digest_response(ch, creds, "REGISTER", "sip:pbx", qop=None, nc=1, cnonce="c") == md5(
        f"{ha1}:n:{ha2}"
    )
    header = format_authorization(ch, creds, "REGISTER", "sip:pbx", nc=1, cnonce="c")
    assert "qop=" not in header and "nc=" not in header and "cnonce" not in header

    sess = Challenge(realm="r", nonce="n", algorithm="MD5-SESS", qop=("auth",))
    ha1s = md5(f"{ha1}:n:c")
    assert digest_response(sess, creds, "REGISTER", "sip:pbx", qop="auth", nc=2, cnonce="c") == md5(
        f"{ha1s}:n:00000002:c:auth:{ha2}"
    )

    sha_sess = Challenge(realm="r", nonce="n", algorithm="SHA-256-SESS", qop=("auth",))
    sha = digest_response(sha_sess, creds, "INVITE", "sip:x@pbx", qop="auth", nc=1, cnonce="c")
    assert len(sha) == 64

    body = b"v=0\r\n"
    ha2i = md5(f"INVITE:sip:x@pbx:{hashlib.md5(body).hexdigest()}")
    ai = Challenge(realm="r", nonce="n", qop=("auth-int",))
    assert digest_response(
        ai, creds, "INVITE", "sip:x@pbx", qop="auth-int", nc=1, cnonce="c", body=body
    ) == md5(f"{ha1}:n:00000001:c:auth-int:{ha2i}")


def _response(status: int, *challenges: tuple[str, str]) -> Response:
    h = Headers()
    for name, value in challenges:
        h.add(name, value)
    return Response(status, None, h)


def test_parse_challenges_from_both_headers_and_one_line() -> None:
    resp = _response(
        401,
        ("WWW-Authenticate", 'Digest realm="a", nonce="n1", qop="auth,auth-int", opaque="o"'),
        ("WWW-Authenticate", 'Basic realm="a", Digest realm="b", nonce="n2", algorithm=SHA-256'),
        ("Proxy-Authenticate", 'Digest realm="p",nonce="n3",stale=TRUE,algorithm=md5'),
        ("WWW-Authenticate", 'Digest realm="broken'),
        ("WWW-Authenticate", 'Digest realm="no-nonce"'),
    )
    chs = parse_challenges(resp)
    assert [(c.realm, c.nonce, c.algorithm, c.qop, c.stale, c.proxy) for c in chs] == [
        ("a", "n1", "MD5", ("auth", "auth-int"), False, False),
        ("b", "n2", "SHA-256", (), False, False),
        ("p", "n3", "MD5", (), True, True),
    ]
    assert chs[0].opaque == "o" and chs[2].header_name == "Proxy-Authorization"


def _register() -> Request:
    h = Headers()
    h.add("Via", "SIP/2.0/UDP 127.0.0.1;branch=z9hG4bK1")
    h.add("From", "<sip:100@pbx>;tag=1")
    h.add("To", "<sip:100@pbx>")
    h.add("Call-ID", "c")
    h.add("CSeq", "1 REGISTER")
    return Request("REGISTER", "sip:pbx", h)


def test_client_prefers_sha256_counts_nonces_and_detects_rejection() -> None:
    client = DigestClient(DigestCredentials("100", "pw"), random.Random(3))
    req = _register()
    client.sign(req)
    assert "Authorization" not in req.headers  # nothing to answer yet
    assert not client.has_challenges
    client.handle_challenge(
        _response(
            401,
            ("WWW-Authenticate", 'Digest realm="pbx", nonce="n1", qop="auth"'),
            ("WWW-Authenticate", 'Digest realm="pbx", nonce="n1", qop="auth", algorithm=SHA-256'),
        )
    )
    client.sign(req)
    client.sign(req)  # signing again replaces, never duplicates
    auths = req.headers.get_lines("Authorization")
    assert len(auths) == 1
    p = parse_auth_header(auths[0])[0][1]
    assert p["algorithm"] == "SHA-256" and p["nc"] == "00000002" and p["uri"] == "sip:pbx"
    ch = Challenge(realm="pbx", nonce="n1", qop=("auth",), algorithm="SHA-256")
    assert p["response"] == digest_response(
        ch, client.credentials, "REGISTER", "sip:pbx", qop="auth", nc=2, cnonce=p["cnonce"]
    )
    # same realm again without stale: the password is wrong, do not loop
    with pytest.raises(AuthError, match="rejected"):
        client.handle_challenge(
            _response(401, ("WWW-Authenticate", 'Digest realm="pbx", nonce="n2", qop="auth"'))
        )


def test_stale_nonce_reauthenticates_with_fresh_count() -> None:
    client = DigestClient(DigestCredentials("100", "pw"), random.Random(3))
    client.handle_challenge(
        _response(401, ("WWW-Authenticate", 'Digest realm="pbx", nonce="n1", qop="auth"'))
    )
    client.authorization_headers("REGISTER", "sip:pbx")
    client.handle_challenge(
        _response(
            401,
            ("WWW-Authenticate", 'Digest realm="pbx", nonce="n2", qop="auth", stale=true'),
        )
    )
    [(name, value)] = client.authorization_headers("REGISTER", "sip:pbx")
    p = parse_auth_header(value)[0][1]
    assert name == "Authorization" and p["nonce"] == "n2" and p["nc"] == "00000001"


def test_a_memory_lets_the_next_client_answer_before_it_is_challenged() -> None:
    memory = DigestMemory()
    creds = DigestCredentials("100", "pw")
    first = DigestClient(creds, random.Random(3), memory)
    first.handle_challenge(
        _response(407, ("Proxy-Authenticate", 'Digest realm="pbx", nonce="n1", qop="auth"'))
    )
    first.authorization_headers("INVITE", "sip:1@pbx")
    # the next call's client answers n1 at once, its count going on from the last call's
    second = DigestClient(creds, random.Random(4), memory)
    [(name, value)] = second.authorization_headers("INVITE", "sip:2@pbx")
    p = parse_auth_header(value)[0][1]
    assert name == "Proxy-Authorization" and p["nonce"] == "n1" and p["nc"] == "00000002"
    # the PBX forgot n1 and challenges anew, not stale: a fresh challenge, not a refusal
    second.handle_challenge(
        _response(407, ("Proxy-Authenticate", 'Digest realm="pbx", nonce="n2", qop="auth"'))
    )
    [(_, value)] = second.authorization_headers("INVITE", "sip:2@pbx")
    p = parse_auth_header(value)[0][1]
    assert p["nonce"] == "n2" and p["nc"] == "00000001"
    assert memory.challenges[(True, "pbx")].nonce == "n2" and "n1" not in memory.nc
    # refused again after answering its own challenge: the password is wrong
    with pytest.raises(AuthError, match="rejected"):
        second.handle_challenge(
            _response(407, ("Proxy-Authenticate", 'Digest realm="pbx", nonce="n3", qop="auth"'))
        )


def test_a_client_leaving_the_memory_goes_bare_and_a_refused_memory_is_not_used() -> None:
    memory = DigestMemory()
    creds = DigestCredentials("100", "pw")
    first = DigestClient(creds, random.Random(3), memory)
    assert not first.preemptive
    first.handle_challenge(
        _response(407, ("Proxy-Authenticate", 'Digest realm="pbx", nonce="n1", qop="auth"'))
    )
    assert not first.preemptive  # its answers are to its own challenge
    second = DigestClient(creds, random.Random(4), memory)
    assert second.preemptive
    second.forget_remembered()
    assert not second.preemptive
    assert second.authorization_headers("INVITE", "sip:2@pbx") == []
    second.handle_challenge(
        _response(407, ("Proxy-Authenticate", 'Digest realm="pbx", nonce="n2", qop="auth"'))
    )
    # its own challenge stays its own: the memory still holds n1
    assert memory.challenges[(True, "pbx")].nonce == "n1"
    memory.refused = True
    third = DigestClient(creds, random.Random(5), memory)
    assert not third.preemptive
    assert third.authorization_headers("INVITE", "sip:3@pbx") == []


def test_without_a_memory_clients_share_nothing() -> None:
    creds = DigestCredentials("100", "pw")
    first = DigestClient(creds, random.Random(3))
    first.handle_challenge(
        _response(407, ("Proxy-Authenticate", 'Digest realm="pbx", nonce="n1", qop="auth"'))
    )
    assert DigestClient(creds, random.Random(4)).authorization_headers("INVITE", "sip:x") == []


def test_proxy_and_www_challenges_both_answered() -> None:
    client = DigestClient(DigestCredentials("100", "pw"), random.Random(3))
    client.handle_challenge(
        _response(407, ("Proxy-Authenticate", 'Digest realm="proxy", nonce="p1"'))
    )
    client.handle_challenge(
        _response(401, ("WWW-Authenticate", 'Digest realm="pbx", nonce="w1", opaque="op"'))
    )
    req = _register()
    client.sign(req)
    assert len(req.headers.get_lines("Proxy-Authorization")) == 1
    [www] = req.headers.get_lines("Authorization")
    assert 'opaque="op"' in www


def test_unsupported_challenges_raise() -> None:
    client = DigestClient(DigestCredentials("100", "pw"), random.Random(3))
    with pytest.raises(AuthError, match="no supported"):
        client.handle_challenge(
            _response(401, ("WWW-Authenticate", 'Digest realm="r", nonce="n", algorithm=AKAv1-MD5'))
        )
    with pytest.raises(AuthError):
        client.handle_challenge(_response(401, ("WWW-Authenticate", 'Basic realm="r"')))
    with pytest.raises(AuthError):
        client.handle_challenge(_response(401))
    with pytest.raises(AuthError):
        client.handle_challenge(
            _response(401, ("WWW-Authenticate", 'Digest realm="r", nonce="n", qop="auth-conf"'))
        )


def test_credentials_repr_hides_password() -> None:
    assert "pw" not in repr(DigestCredentials("100", "pw"))


@pytest.mark.parametrize("bad", ['realm="x"', 'Digest realm="x', "Digest realm=", "Digest =x"])
def test_parse_auth_header_rejects_bad_syntax(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_auth_header(bad)
