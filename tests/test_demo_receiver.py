"""The demo's return_url receiver takes a big task's callback (one POST, every dialplan)."""

from __future__ import annotations

import io
import json

import aiohttp

from sipclient.demo import CallbackReceiver


async def test_a_task_of_3000_numbers_arrives_in_one_callback() -> None:
    receiver = CallbackReceiver()
    await receiver.start()
    try:
        detail = {
            "kind": "announcement",
            "template": "kong_p0_f1.wav",
            "score": 40,
            "pad": "x" * 600,
        }
        dialplans = [
            {"phone": f"1{i:010}", "result": "empty", "status": "finish", "detail": detail}
            for i in range(3000)
        ]
        body = {"code": 200, "data": {"task_id": 1, "dialplans": dialplans}}
        async with (
            aiohttp.ClientSession() as s,
            s.post(
                receiver.url,
                data=io.BytesIO(json.dumps(body).encode()),
                headers={"Content-Type": "application/json"},
            ) as r,
        ):
            # over aiohttp's 1 MiB default: the server's callbacks used to get 413 for ever
            assert r.status == 200
        assert len(receiver.verdicts.results) == 3000
        assert receiver.verdicts.results["10000002999"][0] == "empty"
    finally:
        await receiver.stop()
