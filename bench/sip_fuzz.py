"""Mutation fuzzing of the SIP parser: N mutated messages, nothing but ParseError allowed.

Usage: .venv/bin/python bench/sip_fuzz.py [--count 100000] [--seed 1]
Seeds are the RFC 4475 torture messages (tests/sip/data/rfc4475); each input gets 1-4
random edits (byte flips, inserts, deletes, grammar tokens spliced in, truncation) and is
parsed, serialized, and every lazy accessor, transaction_key, parse_challenges and the SDP
parser are run on it. Any other exception stops the run and prints the input (hex) to
reproduce it. Prints a summary and writes bench/out/sip_fuzz.json.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the mutation helpers live with the tests

from tests.sip.fuzzing import exercise, mutate, seeds  # noqa: E402


def main() -> int:
    """Run the fuzz loop; exit status 1 on an unexpected exception."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--count", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    corpus = seeds()
    parsed = 0
    t0 = time.perf_counter()
    for i in range(args.count):
        data = mutate(rng, corpus[i % len(corpus)])
        try:
            parsed += exercise(data)
        except Exception as err:  # the finding we are looking for
            print(f"input {i} raised {type(err).__name__}: {err}\n{data.hex()}")
            return 1
    elapsed = time.perf_counter() - t0
    summary = {
        "bench": "sip_fuzz",
        "inputs": args.count,
        "seed": args.seed,
        "parsed_ok": parsed,
        "rejected_with_parse_error": args.count - parsed,
        "other_exceptions": 0,
        "seconds": round(elapsed, 2),
        "inputs_per_s": round(args.count / elapsed),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    print(json.dumps(summary, indent=2))
    out = ROOT / "bench" / "out" / "sip_fuzz.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
