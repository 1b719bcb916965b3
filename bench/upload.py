"""The daemon's CPU per /dial_wav upload: aiohttp's FormData against `control.form_data`.

    .venv/bin/python bench/upload.py [--uploads 600] [--wav-kb 30]

A receiver in another process (aiohttp, parsing each body with the server's own
`split_multipart`, answering the 001 envelope) takes `--uploads` uploads of a
`--wav-kb` KB WAV with the 15 fields the daemon sends; the sender's CPU time
(`time.process_time`) per upload is printed for both ways of building the body,
each run twice, alternately (the box's speed drifts). Only the sender's CPU
counts: it is what the daemon pays per call.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sipclient.agent.control import form_data
from sipclient.lab.ports import free_port
from sipclient.server.payloads import split_multipart

FIELDS = {
    "extensionNum": "2001",
    "phone": "13800000001",
    "dialplanId": "12345",
    "sipCode": "487",
    "sipReason": "Request Terminated",
    "q850Cause": "",
    "answered": "0",
    "earlyMedia": "1",
    "startedAt": "1795457654947",
    "ringMs": "0",
    "mediaMs": "2140",
    "localVerdict": "empty",
    "localConfidence": "0.97",
    "decidedMs": "2140",
    "evidence": "announcement",
}


def serve(port: int) -> None:
    async def take(request: web.Request) -> web.Response:
        body = await request.read()
        boundary = request.content_type and request.headers["Content-Type"].split("boundary=")[1]
        parts = split_multipart(body, boundary.strip('"'))
        assert len(parts) == len(FIELDS) + 1
        return web.json_response({"code": 200, "msg": "ok", "data": {}})

    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_post("/dial_wav/c", take)
    web.run_app(app, host="127.0.0.1", port=port, print=None)  # type: ignore[arg-type]


async def send(url: str, way: str, uploads: int, wav: bytes) -> float:
    async with aiohttp.ClientSession() as session:
        t0 = time.process_time()
        for _ in range(uploads):
            if way == "FormData":
                form = aiohttp.FormData()
                for key, value in FIELDS.items():
                    form.add_field(key, value)
                form.add_field("file_name", wav, filename="a.wav", content_type="audio/wav")
                async with session.post(url, data=form) as resp:
                    assert (await resp.json())["code"] == 200
            else:
                body, ctype = form_data(FIELDS, "file_name", "a.wav", wav)
                async with session.post(url, data=body, headers={"Content-Type": ctype}) as resp:
                    assert (await resp.json())["code"] == 200
        return (time.process_time() - t0) / uploads


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--uploads", type=int, default=600)
    ap.add_argument("--wav-kb", type=int, default=30)
    ap.add_argument("--serve", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve)
        return
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(port)])
    try:
        url = f"http://127.0.0.1:{port}/dial_wav/c"
        wav = os.urandom(args.wav_kb * 1024)
        for _ in range(100):  # until the receiver listens
            try:
                asyncio.run(send(url, "form_data", 1, wav))
                break
            except aiohttp.ClientError:
                time.sleep(0.1)
        for way in ("FormData", "form_data", "FormData", "form_data"):
            cpu = asyncio.run(send(url, way, args.uploads, wav))
            print(f"{way:10s} {cpu * 1000:.3f} ms CPU per upload ({args.uploads} uploads)")
    finally:
        proc.kill()
        proc.wait()


if __name__ == "__main__":
    main()
