"""`sipclient dial NUMBER --account EXT:PASSWORD@HOST:PORT [--record F.wav]`.

One call by hand, as an operator tests a line: register (unless
`--no-register`), dial, wait for the end of the call (the far end's final
response, our CANCEL at `--ring-timeout`, Timer B), un-register, and print
the outcome as ONE JSON object on stdout (logs go to stderr):

    {"number": "...", "verdict": "empty", "confidence": 0.95,
     "sip_code": 404, "reason": "Not Found", "q850_cause": 1,
     "timings": {"invite_at": 1795426160.636, "first_provisional_ms": 2,
                 "ringing_ms": null, "early_media_ms": 4, "answer_ms": null,
                 "duration_ms": 309},
     "evidence": {...}, "signalling": {...}, "media": {...}, "recording": {...}}

`--transport`, `--bind` and `--ring-timeout` default to the config's
`pbx.transport`, `sip.bind` (0.0.0.0:0: any address, the one facing the PBX
goes in Via, Contact and SDP; "::" for an IPv6 PBX) and `sip.ring_timeout`.
Until session 8 they defaulted to udp, 127.0.0.1:0 and 60 s whatever the
config said, so `dial` reached no PBX beyond loopback (the sends failed and
it printed a 408).

HOST may be a name: it is looked up once, as the daemon looks up a PBX name
(`sip.bind`'s family, IPv4 first for a wildcard), the call goes to its first
address and the name stays the SIP domain.

Exit status: 0 when the call went through its life, whatever the verdict;
1 on a runtime failure (the PBX name does not resolve, cannot open the
socket, cannot register); 2 on a
malformed `--account` or `--bind`, or a `--bind` of the other address
family than the PBX's.

`--record F.wav`: the far end's audio from the first RTP packet to the end
of the call, 8 kHz mono 16-bit (a zero-frame WAV when no media came), on a
port of `rtp.ports`. Ctrl-C (SIGINT) or SIGTERM hangs up (CANCEL or BYE)
and still prints the outcome.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import ipaddress
import json
import signal
import sys
from pathlib import Path
from typing import Any

from sipclient.agent.call import Call, CallOutcome, MediaInfo
from sipclient.agent.siplines import addresses_of
from sipclient.agent.transport import SipStack, open_stack
from sipclient.agent.useragent import Account, UserAgent
from sipclient.classify.signalling import from_signalling
from sipclient.classify.verdicts import Decision
from sipclient.config import DaemonConfig, HostPort
from sipclient.logs import configure, get_logger
from sipclient.media.ports import PortLease, PortPool, PortsExhausted
from sipclient.media.recorder import Recorder
from sipclient.media.rtp import RtpReceiver
from sipclient.media.stream import MediaFormat

log = get_logger(__name__)

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_USAGE = 2


def decide(outcome: CallOutcome) -> Decision:
    """The verdict of a call from its signalling (a CANCEL at our ring timeout
    after a 180 is `no_answer`: the classifier reads `cancel_reason`)."""
    return from_signalling(outcome.signalling())


def timings(outcome: CallOutcome) -> dict[str, Any]:
    """Milliseconds from the INVITE to each moment of the call."""
    t = outcome.times
    return {
        "invite_at": t.invite,
        "first_provisional_ms": t.ms_between("invite", "first_provisional"),
        "ringing_ms": t.ms_between("invite", "ringing"),
        "early_media_ms": t.ms_between("invite", "early_media"),
        "answer_ms": t.ms_between("invite", "answer"),
        "duration_ms": t.ms_between("invite", "end"),
        "ended_at": t.end,
    }


def outcome_json(
    outcome: CallOutcome, decision: Decision, recording: dict[str, Any]
) -> dict[str, Any]:
    """The one JSON object `dial` prints."""
    verdict = decision.as_json()
    media = outcome.as_json()["media"]
    return {
        "number": outcome.number,
        "verdict": verdict["verdict"],
        "confidence": verdict["confidence"],
        "transient": verdict["transient"],
        "sip_code": outcome.sip_code,
        "reason": outcome.reason,
        "q850_cause": outcome.q850_cause,
        "timings": timings(outcome),
        "evidence": verdict["evidence"],
        "signalling": {
            "ringing": outcome.ringing,
            "early_media": outcome.early_media,
            "answered": outcome.answered,
            "cancelled_by_us": outcome.cancelled_by_us,
            "cancel_reason": outcome.cancel_reason,
            "ended_by": outcome.ended_by,
            "local_code": outcome.local_code,
        },
        "media": media,
        "recording": recording,
        "call_id": outcome.call_id,
    }


def _print(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
    sys.stdout.flush()


class _Media:
    """The RTP side of `--record` (or just a bound port for the offer without it)."""

    def __init__(self, config: DaemonConfig, host: str, record: Path | None) -> None:
        self.record = record
        self.pool = PortPool(config.rtp.ports, host)
        self.lease: PortLease = self.pool.allocate()
        self.recorder = Recorder.from_settings(config.recordings, record) if record else None
        self.receiver: RtpReceiver | None = None
        self._answered = False
        self._progress = False

    @property
    def local(self) -> tuple[str, int]:
        return (self.lease.host, self.lease.port)

    async def listen(self, peer_ip: str) -> None:
        """Receive from before the INVITE leaves, as the daemon does (media/rtp.py,
        "Media before the answer"): media that outruns its 183, or whose 183 was
        lost, is recorded too."""
        if self.recorder is not None:
            self.receiver = await RtpReceiver.listen(
                self.lease,
                self.recorder,
                peer_ip=peer_ip,
                unanswered_ok=lambda: not self._progress and not self._answered,
            )

    def provisional(self, status: int) -> None:
        if 180 <= status < 200:
            self._progress = True

    def started(self, info: MediaInfo) -> None:
        if self.receiver is None or self._answered or info.codec is None:
            return
        if info.payload_type is None:
            return
        self._answered = True
        fmt = MediaFormat(info.codec, info.payload_type, info.telephone_event)
        self.receiver.answer(fmt, info.remote_addr)

    async def close(self) -> dict[str, Any]:
        stats: dict[str, Any] | None = None
        if self.receiver is not None:
            stats = (await self.receiver.close()).as_dict()
        else:
            self.lease.release()
        if self.recorder is None:
            return {"path": None, "note": "no --record given"}
        result = self.recorder.close()
        return {
            "path": str(result.path),
            "seconds": round(result.seconds, 3),
            "truncated": result.truncated,
            "rtp": stats,
        }


def _bind(args: argparse.Namespace, config: DaemonConfig, account: Account) -> HostPort:
    """`--bind`, else `sip.bind`; a wildcard follows the PBX's address family.

    Raises ValueError for an address of the other family: nothing sent from it
    reaches the PBX (it read as a 408 after Timer B, 32 s later).
    """
    bind = HostPort.parse(args.bind, allow_zero=True) if args.bind else config.sip.bind
    pbx_v6 = ":" in account.host.host
    if bind.host in ("0.0.0.0", "::"):
        return HostPort("::" if pbx_v6 else "0.0.0.0", bind.port)
    if (":" in bind.host) != pbx_v6:
        raise ValueError(f"cannot reach the PBX {account.host} from the local address {bind}")
    return bind


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


async def _resolved(args: argparse.Namespace, config: DaemonConfig, account: Account) -> Account:
    """The account with a PBX name replaced by its first address, as the daemon
    resolves one (`siplines.addresses_of`: the bind's family, IPv4 first for a
    wildcard); the name stays the SIP domain unless one is given.

    The call then goes to one address, and media that comes before the answer is
    compared with it (a name never matched a source address: with a lost 183
    nothing was recorded). Raises OSError when the name does not resolve.
    """
    if _is_address(account.host.host):
        return account
    bind = HostPort.parse(args.bind, allow_zero=True) if args.bind else config.sip.bind
    address = (await addresses_of(account.host.host, bind.host))[0]
    return dataclasses.replace(
        account,
        host=HostPort(address, account.host.port),
        domain=account.domain or str(account.host),
    )


async def _dial(args: argparse.Namespace, config: DaemonConfig, account: Account) -> int:
    try:
        account = await _resolved(args, config, account)
    except OSError as exc:
        _print({"error": f"cannot resolve the PBX {account.host.host}: {exc}", "verdict": None})
        return EXIT_RUNTIME
    try:
        bind = _bind(args, config, account)
    except ValueError as exc:  # a name's address of the other family than --bind
        print(f"sipclient dial: {exc}", file=sys.stderr)
        return EXIT_USAGE
    remote = (account.host.host, account.host.port)
    ring_timeout = config.sip.ring_timeout if args.ring_timeout is None else args.ring_timeout
    try:
        stack: SipStack = await open_stack(
            transport=account.transport,
            bind=bind,
            remote=remote,
            t1=config.sip.t1,
            user_agent=config.sip.user_agent,
        )
    except OSError as exc:
        _print({"error": f"cannot open SIP {account.transport} socket: {exc}", "verdict": None})
        return EXIT_RUNTIME
    ua = UserAgent(
        stack,
        account,
        expires=config.sip.register_expires,
        user_agent=config.sip.user_agent,
        prack=config.sip.prack,
        preemptive_auth=config.sip.preemptive_auth,
    )
    registered = False
    try:
        if not args.no_register:
            registered = await ua.register(timeout=max(5.0, 64 * config.sip.t1 + 1))
            if not registered:
                _print(
                    {
                        "error": f"cannot register {account.extension} at {account.host}: "
                        f"{ua.reason or 'no answer'}",
                        "sip_code": ua.last_status,
                        "verdict": None,
                    }
                )
                return EXIT_RUNTIME
        try:
            media = _Media(config, stack.ep.local[0], args.record)
        except PortsExhausted as exc:
            _print({"error": str(exc), "verdict": None})
            return EXIT_RUNTIME
        call: Call = ua.call(
            args.number,
            local_rtp=media.local,
            ring_timeout=ring_timeout,
            on_early_media=media.started,
            on_provisional=media.provisional,
        )
        await media.listen(account.host.host)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, call.hangup)
        try:
            await call.start()
            outcome = await call.ended()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
        recording = await media.close()
        _print(outcome_json(outcome, decide(outcome), recording))
        return EXIT_OK
    finally:
        if registered:
            await ua.stop(timeout=max(2.0, 64 * config.sip.t1))
        await stack.close()


def dial_main(args: argparse.Namespace, config: DaemonConfig) -> int:
    """Entry point of `sipclient dial` (see the module docstring)."""
    # stdout carries the one JSON object: every log line goes to stderr
    fmt = "json" if config.log.format == "json" else "console"
    configure(config.log.level, fmt, stream=sys.stderr)
    try:
        account = Account.parse(args.account, transport=args.transport or config.pbx.transport)
        if args.bind:
            HostPort.parse(args.bind, allow_zero=True)
        if _is_address(account.host.host):
            _bind(args, config, account)  # a name's family is known once resolved (_dial)
    except ValueError as exc:
        print(f"sipclient dial: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return asyncio.run(_dial(args, config, account))
    except KeyboardInterrupt:
        return EXIT_RUNTIME
