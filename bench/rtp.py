"""Benchmark the RTP receive path: parse + reorder + decode, alone and over real UDP.

    .venv/bin/python bench/rtp.py [--seconds 3] [--streams 200]
    .venv/bin/python bench/rtp.py --path-only [--streams 200] [--rounds 250]

Prints and writes bench/out/rtp.json:

- import cost of `aiortc.rtp` (wall time and RSS growth, in a fresh
  interpreter): the card chose aiortc's `RtpPacket.parse`, and importing
  `aiortc.rtp` imports all of aiortc (av, aioice, pyOpenSSL, ...);
- per-packet cost of `RtpPacket.parse` against a bare `struct.unpack` of the
  12-byte header, to show what aiortc costs per packet;
- each decoder alone, µs per 20 ms payload (G722 both ways: 16 kHz + our
  FIR, and libg722's native 8 kHz output);
- the sans-IO path alone (`RtpStream.receive`: parse, latch, order, decode)
  for PCMU and G722, packets/s on one core (CPU time);
- real UDP on loopback: a sender process blasts 8 streams at the receiver
  (`RtpReceiver` on an asyncio loop); packets/s per CPU second of the
  receiving process;
- 200 concurrent calls at 50 packets/s each (10,000 packets/s), each with a
  `Recorder` writing its WAV: measured CPU % of the receiving process over
  `--seconds`, next to the figure extrapolated from the per-packet cost.

`--path-only` measures just the receive path the daemon runs per wake-up
(`RtpReceiver._on_readable`: `read_burst`, `RtpStream.receive`, the sink, the
timer re-arm) with an in-memory `Recorder` as the sink, as the daemon has it
without `recordings.keep`, and no classifier: `--streams` receivers on real
loopback sockets, one 20 ms packet queued on each per round (sent untimed),
then each receiver's `_on_readable` called directly, CPU time (process) of
those calls only. The event loop's own dispatch is left out, so the figure is
what this path costs, not asyncio. Prints µs per packet for PCMU, PCMA and
G722 (best and median of `--repeat` runs) and writes nothing.

The machine is shared (2 cores, several jobs): figures are under contention.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np

from sipclient.config import PortRange
from sipclient.logs import configure
from sipclient.media.decoders import G722Decoder, encode, make_decoder
from sipclient.media.frames import AudioFrame
from sipclient.media.ports import PortPool
from sipclient.media.recorder import Recorder
from sipclient.media.rtp import KeepAlive, RtpReceiver, StreamOptions
from sipclient.media.stream import MediaFormat, RtpStream

OUT = Path(__file__).resolve().parent / "out" / "rtp.json"
CODECS = {"PCMU": 0, "G722": 9}
PAYLOAD_TYPES = {"PCMU": 0, "PCMA": 8, "G722": 9}


def packets(codec: str, n: int, *, ssrc: int = 1) -> list[bytes]:
    """`n` consecutive 20 ms RTP packets of a 1 kHz tone in `codec`."""
    t = np.arange(160 * n) / 8000
    pcm = np.round(8000 * np.sin(2 * np.pi * 1000 * t)).astype(np.int16)
    payload = encode(codec, pcm)
    pt = PAYLOAD_TYPES[codec]
    return [
        struct.pack("!BBHLL", 0x80, pt, i & 0xFFFF, 160 * i, ssrc)
        + payload[160 * i : 160 * i + 160]
        for i in range(n)
    ]


def import_cost() -> dict[str, Any]:
    # VmRSS, not ru_maxrss: a child inherits its parent's peak across exec.
    code = textwrap.dedent(
        """
        import sys, time
        import numpy
        def rss_kb():
            for line in open("/proc/self/status"):
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        before, n0 = rss_kb(), len(sys.modules)
        t = time.perf_counter()
        import aiortc.rtp
        ms = (time.perf_counter() - t) * 1000
        top = {m.split(".")[0] for m in sys.modules}
        heavy = sorted(top & {"av", "aioice", "OpenSSL", "cryptography", "pylibsrtp", "pyee"})
        print(ms, (rss_kb() - before) / 1024, len(sys.modules) - n0, ",".join(heavy))
        """
    )
    runs = []
    for _ in range(3):
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        )
        ms, mb, mods, heavy = out.stdout.split()
        runs.append((float(ms), float(mb), int(mods), heavy))
    best = min(runs)
    return {
        "import_ms": round(best[0], 1),
        "rss_growth_mb": round(best[1], 1),
        "modules_added": best[2],
        "heavy_packages": best[3].split(","),
    }


def per_packet_parse() -> dict[str, float]:
    from aiortc.rtp import RtpPacket

    data = packets("PCMU", 2000)
    header = struct.Struct("!BBHLL")
    rounds = 10
    t = time.process_time()
    for _ in range(rounds):
        for d in data:
            RtpPacket.parse(d)
    aiortc_us = (time.process_time() - t) / (rounds * len(data)) * 1e6
    t = time.process_time()
    for _ in range(rounds):
        for d in data:
            header.unpack_from(d)
            d[12:]
    struct_us = (time.process_time() - t) / (rounds * len(data)) * 1e6
    return {"aiortc_parse_us": round(aiortc_us, 2), "struct_header_us": round(struct_us, 2)}


def decode_only(n: int = 3000) -> dict[str, float]:
    """µs per 20 ms payload for each decoder alone (G722 both ways)."""
    out = {}
    for name, make in (
        ("PCMU", lambda: make_decoder("PCMU")),
        ("PCMA", lambda: make_decoder("PCMA")),
        ("G722_16k_fir", lambda: G722Decoder()),
        ("G722_native_8k", lambda: G722Decoder(native_8k=True)),
    ):
        codec = "G722" if name.startswith("G722") else name
        payloads = [p[12:] for p in packets(codec, n)]
        decoder = make()
        t = time.process_time()
        for p in payloads:
            decoder.decode(p)
        out[name] = round((time.process_time() - t) / n * 1e6, 2)
    return out


def sans_io(codec: str, n: int = 5000, *, native_8k: bool = False) -> dict[str, float]:
    data = packets(codec, n)
    src = ("127.0.0.1", 40000)
    stream = RtpStream(MediaFormat(codec, PAYLOAD_TYPES[codec]), src, g722_native_8k=native_8k)
    sink_samples = 0
    t = time.process_time()
    for i, d in enumerate(data):
        for frame in stream.receive(d, src, i * 0.02):
            sink_samples += len(frame.pcm)
    cpu = time.process_time() - t
    assert sink_samples == 160 * n
    return {"packets_per_cpu_s": round(n / cpu), "us_per_packet": round(cpu / n * 1e6, 2)}


SENDER = textwrap.dedent(
    """
    import socket, sys, time, json
    cfg = json.loads(sys.argv[1])
    data = [bytes.fromhex(h) for h in cfg["packets"]]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    ports, interval, seconds = cfg["ports"], cfg["interval"], cfg["seconds"]
    sent, k, t0 = 0, 0, time.monotonic()
    while time.monotonic() - t0 < seconds:
        d = data[k % len(data)]
        seq = k & 0xFFFF
        ts = (160 * k) & 0xFFFFFFFF
        pkt = d[:2] + seq.to_bytes(2, "big") + ts.to_bytes(4, "big") + d[8:]
        for p in ports:
            sock.sendto(pkt, ("127.0.0.1", p))
            sent += 1
        k += 1
        if interval:
            delay = t0 + k * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    print(sent)
    """
)


async def udp_run(
    codec: str, streams: int, interval: float, seconds: float, record: bool
) -> dict[str, Any]:
    pool = PortPool(PortRange(41000, 41000 + 4 * streams + 200), "127.0.0.1")
    tmp = Path(tempfile.mkdtemp(prefix="bench-rtp-"))
    receivers: list[RtpReceiver] = []
    recorders: list[Recorder] = []
    for i in range(streams):
        if record:
            rec = Recorder(tmp / f"{i}.wav", max_seconds=seconds + 5, max_bytes=10**8)
            recorders.append(rec)
            sink: Any = rec
        else:

            def sink(_frame: AudioFrame) -> None:
                return None

        lease = pool.allocate()
        receivers.append(
            await RtpReceiver.open(
                lease,
                MediaFormat(codec, PAYLOAD_TYPES[codec]),
                None,
                sink,
                keepalive=KeepAlive(burst=0, interval=0),
                options=StreamOptions(pad_to_end=False, probation=1),
            )
        )
    cfg = {
        "packets": [p.hex() for p in packets(codec, 50)],
        "ports": [r.local_port for r in receivers],
        "interval": interval,
        "seconds": seconds,
    }
    cpu0, wall0 = time.process_time(), time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SENDER, json.dumps(cfg), stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    # Let the loop drain what is still queued in the sockets before counting.
    received, settled = -1, 0
    while settled < 3:
        await asyncio.sleep(0.1)
        now = sum(r.stats.packets for r in receivers)
        settled = settled + 1 if now == received else 0
        received = now
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    sent = int(out.decode().strip())
    for r in receivers:
        await r.close()
    for rec in recorders:
        rec.close()
    for f in tmp.iterdir():
        f.unlink()
    tmp.rmdir()
    return {
        "codec": codec,
        "streams": streams,
        "sent": sent,
        "received": received,
        "cpu_s": round(cpu, 3),
        "wall_s": round(wall, 3),
        "packets_per_cpu_s": round(received / cpu) if cpu else None,
        "cpu_percent_of_one_core": round(100 * cpu / wall, 1),
        # CPU per second of media actually carried: the honest figure when the
        # (Python) sender fell behind its 20 ms pace and stretched the wall time.
        "cpu_percent_per_media_second": (
            round(100 * cpu / (received / (streams / interval)), 1)
            if interval and received
            else None
        ),
        "lost_in_kernel_or_late": sent - received,
        "recording": record,
    }


async def path_only(codec: str, streams: int, rounds: int) -> float:
    """CPU µs per packet of `_on_readable` with one packet waiting per socket (see docstring)."""
    import socket

    pool = PortPool(PortRange(41000, 41000 + 4 * streams + 200), "127.0.0.1")
    tmp = Path(tempfile.mkdtemp(prefix="bench-rtp-"))
    receivers: list[RtpReceiver] = []
    recorders: list[Recorder] = []
    for i in range(streams):
        rec = Recorder(tmp / f"{i}.wav", max_seconds=rounds / 50 + 5, in_memory=True)
        recorders.append(rec)
        receivers.append(
            await RtpReceiver.open(
                pool.allocate(),
                MediaFormat(codec, PAYLOAD_TYPES[codec]),
                None,
                rec,
                keepalive=KeepAlive(burst=0, interval=0),
                options=StreamOptions(pad_to_end=False, probation=1),
            )
        )
    await asyncio.sleep(0)  # let the (empty) keep-alive tasks finish
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.bind(("127.0.0.1", 0))
    data = packets(codec, rounds)
    targets = [("127.0.0.1", r.local_port) for r in receivers]
    # The loop is not run while measuring: no reader callback steals a datagram.
    cpu = 0
    for d in data:
        for t in targets:
            sender.sendto(d, t)
        t0 = time.process_time_ns()
        for r in receivers:
            r._on_readable()
        cpu += time.process_time_ns() - t0
    sender.close()
    received = sum(r.stats.packets for r in receivers)
    assert received == rounds * streams, (received, rounds * streams)
    for r in receivers:
        await r.close()
    for rec in recorders:
        rec.close()
    tmp.rmdir()
    return cpu / 1000 / received


def path_only_main(streams: int, rounds: int, repeat: int) -> None:
    print(f"receive path per packet, {streams} streams x {rounds} packets, CPU µs (best / median):")
    for codec in PAYLOAD_TYPES:
        runs = sorted(asyncio.run(path_only(codec, streams, rounds)) for _ in range(repeat))
        print(
            f"  {codec}: {runs[0]:.2f} / {runs[len(runs) // 2]:.2f}  (runs: "
            + ", ".join(f"{x:.2f}" for x in runs)
            + ")"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--path-only", action="store_true", help="only the receive path, µs/packet")
    parser.add_argument("--rounds", type=int, default=250, help="packets per stream (--path-only)")
    parser.add_argument("--repeat", type=int, default=5, help="runs per codec (--path-only)")
    args = parser.parse_args()
    configure("warning")
    if args.path_only:
        path_only_main(args.streams, args.rounds, args.repeat)
        return

    result: dict[str, Any] = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        "note": "shared 2-core machine, several jobs running: figures under contention",
    }
    result["aiortc_import"] = import_cost()
    print("import aiortc.rtp:", result["aiortc_import"])
    result["parse"] = per_packet_parse()
    print("per packet parse:", result["parse"])
    result["decode_us_per_packet"] = decode_only()
    print("decode alone, us per 20 ms packet:", result["decode_us_per_packet"])
    result["sans_io"] = {codec: sans_io(codec) for codec in CODECS}
    result["sans_io"]["G722_native_8k"] = sans_io("G722", native_8k=True)
    print("parse+order+decode alone:", result["sans_io"])
    result["udp_blast"] = {
        codec: asyncio.run(udp_run(codec, 8, 0.0, args.seconds, record=False)) for codec in CODECS
    }
    print("real UDP, 8 streams flat out:", result["udp_blast"])
    concurrent: dict[str, Any] = {}
    for codec in CODECS:
        measured = asyncio.run(udp_run(codec, args.streams, 0.02, args.seconds, record=True))
        per_packet = 1 / result["udp_blast"][codec]["packets_per_cpu_s"]
        measured["extrapolated_cpu_percent"] = round(100 * args.streams * 50 * per_packet, 1)
        concurrent[codec] = measured
    result["concurrent_50pps"] = concurrent
    print(f"{args.streams} streams x 50 pps with recorders:", concurrent)
    result["ru_maxrss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written {OUT}")


if __name__ == "__main__":
    main()
