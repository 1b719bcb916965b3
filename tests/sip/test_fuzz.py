"""Fuzzing: arbitrary and mutated input never raises anything but ParseError / SdpError.

Two kinds: hypothesis (shrinking, structured) with a modest example budget, and a seeded
mutation loop of 100 000 inputs (deterministic, a few seconds) -- together well over the
100k required inputs. ``bench/sip_fuzz.py`` runs the mutation loop with any count and seed.
"""

from __future__ import annotations

import contextlib
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sipclient.sip.sdp import SdpError, parse_answer
from tests.sip.fuzzing import exercise, exercise_stream, mutate, seeds

SEEDS = seeds()
FUZZ = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=2048))
def test_arbitrary_bytes(data: bytes) -> None:
    exercise(data)


@FUZZ
@given(
    st.sampled_from(SEEDS),
    st.lists(st.tuples(st.integers(0, 4000), st.binary(max_size=12)), max_size=4),
    st.integers(0, 4000),
)
def test_spliced_valid_messages(seed: bytes, edits: list[tuple[int, bytes]], cut: int) -> None:
    data = seed
    for pos, chunk in edits:
        data = data[:pos] + chunk + data[pos + len(chunk) // 2 :]
    exercise(data[: max(cut, 1)] if cut < len(data) else data)


@FUZZ
@given(
    st.text(
        alphabet=st.sampled_from(list(' \t\r\n:;,<>"\\=@/?[]%sipSIP/2.0vVl0123456789')),
        max_size=400,
    )
)
def test_grammar_alphabet(text: str) -> None:
    exercise(("INVITE sip:a@b SIP/2.0\r\n" + text).encode())
    exercise(("SIP/2.0 200 OK\r\n" + text).encode())


@FUZZ
@given(st.sampled_from(SEEDS), st.lists(st.integers(0, 5000), max_size=6), st.binary(max_size=64))
def test_stream_parser_chunks(seed: bytes, cuts: list[int], junk: bytes) -> None:
    data = b"\r\n\r\n" + seed + junk + seed
    exercise_stream(data, [c % (len(data) + 1) for c in cuts])


@FUZZ
@given(st.binary(max_size=600))
def test_sdp_arbitrary(data: bytes) -> None:
    with contextlib.suppress(SdpError):
        parse_answer(data)


def test_100k_seeded_mutations() -> None:
    rng = random.Random(20260511)
    parsed = 0
    for i in range(100_000):
        seed = SEEDS[i % len(SEEDS)]
        parsed += exercise(mutate(rng, seed))
    # the corpus must keep reaching deep code: many mutants still parse
    assert 5_000 < parsed < 95_000
