"""The daemon's lines over real SIP: `SipSide` (the stacks, the RTP port pool and
the template library every line shares) and `SipLine` (one extension's user
agent), the `LineBackend` the control loop in daemon.py drives, and `_dial`,
one call joining the user agent's `Call`, the RTP receiver, the recorder and
the streaming classifier.

Moved out of daemon.py (session 14) so that module holds the control loop;
nothing here imports it (daemon.py imports `SipSide`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import socket
import time
from collections.abc import Callable, Coroutine
from typing import Any

import structlog

from sipclient.agent.analysis import BlockAnalysis
from sipclient.agent.control import Account, DialplanItem
from sipclient.agent.keeping import CallRecord
from sipclient.agent.leftovers import CallJournal
from sipclient.agent.library_sync import daemon_library
from sipclient.config import DaemonConfig, HostPort
from sipclient.logs import get_logger

log = get_logger(__name__)

CALL_GIVE_UP_AT_STOP = 6.0
"""Seconds after SIGTERM a call whose far end has not answered our CANCEL (or BYE)
is given up with what it knows: a CANCEL lost with a PBX restarted leaves its
INVITE waiting 64*T1 (32 s), and cut off at CALL_STOP_WAIT the call lost the
verdict it had (no upload: the number was dialled twice). What is left of the
stop's wait is for its spool write."""

RESOLVE_RETRY_MIN = 1.0
RESOLVE_RETRY_MAX = 60.0
"""A PBX host name that does not resolve is looked up again after
RESOLVE_RETRY_MIN seconds, doubling up to RESOLVE_RETRY_MAX (`SipLine.start`)."""

LOOK_AGAIN_MIN = 10.0
"""Seconds between two lookups of one PBX name asked by lines losing their
registration (`SipSide.look_again_soon`): a dead PBX fails every line's
REGISTER, and one lookup answers for all of them."""

TICK_S = 0.1
"""Period of the classifier's clock once its no-RTP wait is due and still undecided."""

TICK_SLACK_S = 0.005
"""Added to the first tick: `at_ms` truncates to whole ms, so a timer at exactly
`rtp.no_rtp_wait` after the provisional can read 1999 of 2000 ms and miss by a
whole TICK_S (measured: ringing_180 calls 2.106 s instead of 2.02 s)."""

CallHooks = Callable[[], None]


CALL_STUCK_MARGIN_S = 10.0
"""Past the ring timeout and a CANCEL's 64*T1, this much more before a call is stuck."""


def longest_call_s(config: DaemonConfig) -> float:
    """The longest a call can last (`_dial`'s stuck limit): the ring timeout, a
    CANCEL unanswered for 64*T1, and `CALL_STUCK_MARGIN_S`."""
    return config.sip.ring_timeout + 64 * config.sip.t1 + CALL_STUCK_MARGIN_S


async def addresses_of(host: str, bind_host: str) -> list[str]:
    """Every address `host` has that we can reach from `bind_host` (`sip.bind`), in
    the resolver's order (OSError if none).

    With a wildcard bind either family will do, IPv4 first: a name with both
    kinds of address is reached as before IPv6 was followed, and a name with
    only IPv6 ones still is. Otherwise only the bind's family.
    """
    wildcard = bind_host in ("0.0.0.0", "::")
    if wildcard:
        family = socket.AF_UNSPEC
    else:
        family = socket.AF_INET6 if ":" in bind_host else socket.AF_INET
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, None, family=family, type=socket.SOCK_DGRAM
    )
    found = dict.fromkeys(
        str(info[4][0]) for info in infos if info[0] in (socket.AF_INET, socket.AF_INET6)
    )
    addresses = sorted(found, key=lambda a: ":" in a)  # stable: IPv4 first
    if not addresses:
        kind = "" if wildcard else f" {family.name}"
        raise OSError(f"{host}: no{kind} address")
    return addresses


def _nothing() -> None:
    """What a call's no-RTP clock does once `_dial` has returned."""


TEST_RTP_DROP_ENV = "SIPCLIENT_TEST_RTP_DROP"
"""Test hook: a fraction (0..1) of received RTP packets the media receiver drops."""


class SipSide:
    """The SIP stacks, the RTP port pool and the template library all lines share.

    One UDP socket serves every extension (or one per extension with
    `sip.socket_per_extension`); TCP gets one connection per PBX.
    """

    def __init__(self, config: DaemonConfig) -> None:
        from sipclient.media.ports import PortPool

        self.config = config
        self._stacks: dict[tuple[str, str, int], Any] = {}
        self._resolved: dict[str, str] = {}
        self._lookups: dict[str, asyncio.Future[str]] = {}
        self._lock = asyncio.Lock()
        self._followers: dict[str, set[SipLine]] = {}
        """Lines registering at a PBX given by name, per name: moved when it moves."""
        self._looked_again: dict[str, float] = {}
        self._relook_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        bind_host = config.sip.bind.host
        self.ports = PortPool(config.rtp.ports, host=bind_host)
        self.library: Any = None
        self.library_version: str | None = None
        """The version of `library` as the server would name it (library_sync.py)."""
        self.drop = _test_drop()
        self.journal: CallJournal | None = None
        """The call journal every stack's calls write to (agent/leftovers.py)."""
        self.analysis = BlockAnalysis()
        """Every call's audio blocks, analysed together once per loop turn (analysis.py)."""

    async def start(self) -> None:
        """Load the template library and the media modules (off the loop).

        The library may build its index; importing `sipclient.media.rtp` imports all
        of aiortc (~350 ms), which the first call used to pay on the loop.
        """
        self.library, self.library_version = await asyncio.to_thread(daemon_library, self.config)
        await asyncio.to_thread(_import_call_modules)
        if self.config.pbx.resolve_every > 0:
            self._spawn(self._watch_names(self.config.pbx.resolve_every))

    async def reload_library(self, config: DaemonConfig) -> None:
        """SIGHUP: the template library again (calls in flight keep the old one).

        Loaded off the loop, like at start: 40-200 ms with its index cached,
        seconds when a read-only folder's index must be built again, during
        which every call's RTP would wait.
        """
        try:
            library, version = await asyncio.to_thread(daemon_library, config)
        except Exception as exc:  # a bad library must not kill the daemon
            log.error("reload_failed", error=f"{type(exc).__name__}: {exc}")
            return
        self.use_library(library, version)
        log.info("library_reloaded", templates=len(self.library))

    def use_library(self, library: Any, version: str | None) -> None:
        """The library the next calls classify with (calls in flight keep theirs)."""
        self.library, self.library_version = library, version

    async def resolve(self, host: str) -> str:
        """The PBX `host` as an address to send to (raises OSError when it does not resolve).

        A name is looked up once, off the loop, and kept: sending to a name would
        make every `sendto` run a blocking lookup on the event loop, and a slow or
        dead resolver would stall every call and trip the watchdog. It is looked
        up again every `pbx.resolve_every` and when a line loses its registration
        (`look_again`): a PBX moved to another address is followed.
        """
        with contextlib.suppress(ValueError):
            ipaddress.ip_address(host)
            return host
        hit = self._resolved.get(host)
        if hit is not None:
            return hit
        # one lookup of a name at a time, shared by every line that waits for it: with
        # the resolver down, 200 lines each asking would fill the default executor's
        # few threads, which the spool's writes use too
        lookup = self._lookups.get(host)
        if lookup is None:
            lookup = asyncio.ensure_future(self._lookup(host))
            self._lookups[host] = lookup
            lookup.add_done_callback(lambda _f: self._lookups.pop(host, None))
        return await asyncio.shield(lookup)

    async def _lookup(self, host: str) -> str:
        address = (await self._addresses(host))[0]
        self._resolved[host] = address
        log.info("pbx_resolved", host=host, address=address)
        return address

    async def _addresses(self, host: str) -> list[str]:
        """Every address `host` has that we can reach (`addresses_of`)."""
        return await addresses_of(host, self.config.sip.bind.host)

    @property
    def wildcard(self) -> bool:
        """`sip.bind` is any address: each PBX is reached in its own family."""
        return self.config.sip.bind.host in ("0.0.0.0", "::")

    def bind_for(self, address: str) -> HostPort:
        """The local address to reach the PBX at `address` from (`sip.bind`'s port).

        A wildcard `sip.bind` follows the PBX's family ("0.0.0.0" or "::"); an
        address of the other family than a given `sip.bind` is a ValueError.
        """
        bind = self.config.sip.bind
        v6 = ":" in address
        if self.wildcard:
            return HostPort("::" if v6 else "0.0.0.0", bind.port)
        if (":" in bind.host) != v6:
            raise ValueError(f"the PBX {address} cannot be reached from sip.bind {bind}")
        return bind

    def follow(self, host: str, line: SipLine) -> None:
        """`line` registers at the PBX named `host`: move it when the name moves."""
        if host in self._resolved:
            self._followers.setdefault(host, set()).add(line)

    def unfollow(self, host: str, line: SipLine) -> None:
        lines = self._followers.get(host)
        if lines is not None:
            lines.discard(line)
            if not lines:
                del self._followers[host]

    async def _watch_names(self, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            for host in list(self._followers):
                try:
                    await self.look_again(host)
                except Exception as exc:  # a bug here must not end the watching
                    log.error("pbx_look_again_failed", host=host, error=repr(exc))

    def look_again_soon(self, host: str) -> None:
        """A line at `host` lost its registration: has the name moved? (at most every
        LOOK_AGAIN_MIN seconds per name; the periodic lookup covers the rest)."""
        if host not in self._followers:
            return
        now = time.monotonic()
        if now - self._looked_again.get(host, -LOOK_AGAIN_MIN) < LOOK_AGAIN_MIN:
            return
        self._looked_again[host] = now
        self._spawn(self.look_again(host))

    async def look_again(self, host: str) -> bool:
        """Look the PBX name `host` up again; True when it moved and its lines with it.

        A lookup that fails keeps the address we have (a resolver down says nothing
        about the PBX). An answer that still holds our address is no move: a
        name with several addresses may list them in another order each time, and
        following the order would re-register every line at every lookup.
        """
        async with self._relook_lock:
            current = self._resolved.get(host)
            try:
                addresses = await self._addresses(host)
            except OSError as exc:
                log.warning("pbx_lookup_failed", host=host, address=current, error=str(exc))
                return False
            if current is None or current in addresses:
                return False
            address = addresses[0]
            self._resolved[host] = address
            lines = list(self._followers.get(host, ()))
            log.warning("pbx_moved", host=host, old=current, address=address, lines=len(lines))
            for line in lines:
                try:
                    await line.move(address)
                except Exception as exc:  # one line failing to move must not keep the others
                    log.error("line_move_failed", extension=line.account.extension, error=repr(exc))
            return True

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stack_for(self, transport: str, host: str, port: int, key: str) -> Any:
        """The shared stack towards host:port (one per line when so configured)."""
        from sipclient.agent.transport import open_stack

        sip = self.config.sip
        bind = self.bind_for(host)  # ValueError: the other family than sip.bind's
        family = 6 if ":" in bind.host else 4
        k = (transport, key if sip.socket_per_extension else "", family)
        if transport == "tcp":
            k = (transport, f"{host}:{port}" + k[1], family)
        async with self._lock:
            stack = self._stacks.get(k)
            if stack is None:
                stack = await open_stack(
                    transport=transport,
                    bind=bind,
                    remote=(host, port),
                    t1=sip.t1,
                    user_agent=sip.user_agent,
                )
                stack.journal = self.journal
                self._stacks[k] = stack
                local = stack.ep.local
                log.info(
                    "sip_stack_opened",
                    transport=transport,
                    local=f"{local[0]}:{local[1]}",
                    remote=f"{host}:{port}",
                )
            return stack

    def rtp_host(self, local_ip: str) -> str:
        """Where a call whose SIP goes out from `local_ip` receives its RTP."""
        if self.wildcard:
            return "::" if ":" in local_ip else "0.0.0.0"
        return self.config.sip.bind.host

    def backend(self, account: Account) -> SipLine:
        """The `BackendFactory` of the daemon."""
        return SipLine(self, account)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for stack in self._stacks.values():
            with contextlib.suppress(Exception):
                await stack.close()
        self._stacks.clear()


def _import_call_modules() -> None:
    import sipclient.classify.decide
    import sipclient.media.recorder
    import sipclient.media.rtp  # noqa: F401  (imported for its side effect: loaded once)


def _test_drop() -> float:
    raw = os.environ.get(TEST_RTP_DROP_ENV, "")
    try:
        value = float(raw) if raw else 0.0
    except ValueError:
        value = 0.0
    if value:
        log.warning("test_rtp_drop_enabled", drop=value)
    return min(max(value, 0.0), 1.0)


class SipLine:
    """One extension: a `UserAgent` registering, and its calls with media and classifier."""

    def __init__(self, side: SipSide, account: Account) -> None:
        self.side = side
        self.account = account
        self.ua: Any = None
        self._registered = False
        self._task: asyncio.Task[Any] | None = None
        self._retiring: set[asyncio.Task[Any]] = set()
        """Un-REGISTERs of user agents left behind by a move (`move`)."""
        self._on_change: Callable[[bool, str], None] = lambda _ok, _why: None
        self._followed = ""

    @property
    def registered(self) -> bool:
        return self._registered

    def _target(self) -> tuple[str, int, str]:
        cfg = self.side.config
        pbx = cfg.pbx.host
        if self.account.host:
            try:
                pbx = HostPort.parse(self.account.host)
            except ValueError:
                log.warning("account_host_invalid", extension=self.account.extension)
        transport = (self.account.transport or cfg.pbx.transport).lower()
        if transport not in ("udp", "tcp"):
            transport = cfg.pbx.transport
        return pbx.host, pbx.port, transport

    async def start(self, on_change: Callable[[bool, str], None]) -> None:
        self._on_change = on_change
        host, port, transport = self._target()
        try:
            address = await self.side.resolve(host)
        except OSError as exc:
            # DNS down or the name unknown: the line is unregistered and the name is
            # looked up again in the background until it resolves
            self._task = asyncio.create_task(
                self._start_when_resolved(host, port, transport, on_change, exc)
            )
            return
        try:
            self.side.bind_for(address)
        except ValueError as wrong:
            # an IPv6 PBX with an IPv4 sip.bind or the other way round: nothing we
            # send would reach it (a name resolves in sip.bind's family only)
            log.error("pbx_unreachable", extension=self.account.extension, reason=str(wrong))
            on_change(False, str(wrong))
            return
        await self._begin(address, host, port, transport, on_change)

    async def _start_when_resolved(
        self,
        host: str,
        port: int,
        transport: str,
        on_change: Callable[[bool, str], None],
        exc: OSError,
    ) -> None:
        delay = RESOLVE_RETRY_MIN
        while True:
            log.error(
                "pbx_unresolvable",
                extension=self.account.extension,
                host=host,
                error=str(exc),
                retry_in=delay,
            )
            on_change(False, f"cannot resolve the PBX host {host}: {exc}")
            await asyncio.sleep(delay)
            delay = min(delay * 2, RESOLVE_RETRY_MAX)
            try:
                address = await self.side.resolve(host)
                break
            except OSError as again:
                exc = again
        try:
            await self._begin(address, host, port, transport, on_change)
        except Exception as failed:
            log.error("line_start_failed", extension=self.account.extension, reason=str(failed))
            on_change(False, f"start failed: {failed}")

    async def _begin(
        self,
        address: str,
        host: str,
        port: int,
        transport: str,
        on_change: Callable[[bool, str], None],
    ) -> None:
        """Open the stack towards `address` and start registering.

        SIP goes to the resolved `address`; the AOR and the Request-URIs keep
        the name (`host`:port is the domain unless one is configured), as the
        PBX was told.
        """
        from sipclient.agent.useragent import Account as UaAccount
        from sipclient.agent.useragent import UserAgent

        stack = await self.side.stack_for(transport, address, port, self.account.extension)
        cfg = self.side.config
        domain = self.account.domain or cfg.pbx.domain
        if not domain and address != host:
            domain = str(HostPort(host, port))
        ua_account = UaAccount(
            self.account.extension,
            self.account.password,
            HostPort(address, port),
            transport,
            domain,
        )

        def changed(ua: Any) -> None:
            if ua is not self.ua:
                return  # a user agent a move left behind (`move`) no longer speaks for us
            state = ua.state
            if state == "registered" and not self._registered:
                self._registered = True
                on_change(True, "")
            elif state == "unregistered" and (self._registered or not ua.registered.is_set()):
                self._registered = False
                on_change(False, ua.reason or "not registered")
                if address != host:
                    self.side.look_again_soon(host)  # the PBX may have moved

        self.ua = UserAgent(
            stack,
            ua_account,
            expires=cfg.sip.register_expires,
            user_agent=cfg.sip.user_agent,
            prack=cfg.sip.prack,
            preemptive_auth=cfg.sip.preemptive_auth,
            on_state=changed,
        )
        if address != host and not self._followed:
            self._followed = host
            self.side.follow(host, self)
        # the core keeps retrying after a failure; states arrive through `changed`
        self._task = asyncio.create_task(self.ua.register(timeout=30.0))

    async def move(self, address: str) -> None:
        """The PBX's name now points at `address`: register there from now on.

        The line is unregistered until the new address grants the binding, so no
        number is dialled in between. Calls in flight keep the old address to their
        end (a `Call` holds its own route); the old user agent un-REGISTERs in the
        background (a PBX still up, e.g. moved for maintenance, would otherwise keep
        a binding to us that rings nobody) and no longer speaks for the line.
        """
        old = self.ua
        if old is None or old.account.host.host == address:
            return
        host, port, transport = self._target()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        log.warning("line_moved", extension=self.account.extension, host=host, address=address)
        if self._registered:
            self._registered = False
            self._on_change(False, f"the PBX {host} moved to {address}: registering there")
        await self._begin(address, host, port, transport, self._on_change)
        retire = asyncio.create_task(old.stop(timeout=2.0))
        self._retiring.add(retire)
        retire.add_done_callback(self._retiring.discard)

    async def stop(self) -> None:
        if self._followed:
            self.side.unfollow(self._followed, self)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self.ua is not None:
            await self.ua.stop(timeout=2.0)
        await asyncio.gather(*self._retiring, return_exceptions=True)
        self._registered = False

    async def recheck(self) -> bool:
        if self.ua is None:
            return False
        # Timer F (64*T1) ends the REGISTER; the margin covers a challenge round
        return bool(await self.ua.recheck(timeout=64 * self.side.config.sip.t1 + 5.0))

    async def dial(
        self, item: DialplanItem, on_answered: CallHooks, cancel: asyncio.Event
    ) -> CallRecord:
        return await _dial(self, item, on_answered, cancel)


async def _dial(
    line: SipLine, item: DialplanItem, on_answered: CallHooks, cancel: asyncio.Event
) -> CallRecord:
    """One call with its media, recording and streaming classifier (module docstring)."""
    from sipclient.classify.decide import CallClassifier
    from sipclient.classify.verdicts import Decision
    from sipclient.media.frames import AudioFrame
    from sipclient.media.recorder import Recorder
    from sipclient.media.rtp import RtpReceiver, StreamOptions
    from sipclient.media.stream import MediaFormat

    side, cfg = line.side, line.side.config
    loop = asyncio.get_running_loop()
    ua = line.ua
    local_ip = ua.stack.ep.local[0]
    # PortsExhausted: Daemon._call keeps the number for later
    lease = side.ports.allocate(side.rtp_host(local_ip))
    wav = cfg.recordings.dir / f"{line.account.extension}-{item.phone}-{time.time_ns()}.wav"
    # Without recordings.keep the WAV only exists for the spool, which writes and fsyncs
    # its own copy: build it in memory (media/recorder.py). A crash before the spool has
    # it loses nothing: the number is still leased to us and is dialled again.
    in_memory = not cfg.recordings.keep
    recorder = Recorder.from_settings(cfg.recordings, wav, in_memory=in_memory)
    classifier = CallClassifier(
        side.library,
        no_rtp_wait_ms=int(cfg.rtp.no_rtp_wait * 1000),
        answer_listen_ms=int(cfg.sip.answer_listen * 1000),
    )
    state: dict[str, Any] = {
        "decision": None,
        "decided_at": None,
        "answered": False,
        "media_seen": False,
        "answered_sdp": False,
        "progress": False,
    }
    t0 = loop.time()
    no_rtp_wait = cfg.rtp.no_rtp_wait
    tick_timer: asyncio.TimerHandle | None = None
    analysis = side.analysis

    def at_ms() -> int:
        return int((loop.time() - t0) * 1000)

    def decided(d: Decision | None) -> None:
        nonlocal tick_timer
        if d is None or state["decision"] is not None:
            return
        state["decision"], state["decided_at"] = d, loop.time()
        if tick_timer is not None:
            tick_timer.cancel()
            tick_timer = None
        log.debug("decided", phone=item.phone, verdict=d.verdict.value, at_ms=at_ms())
        call.cancel(f"decided {d.verdict.value}")  # CANCEL, or BYE once answered

    def sink(frame: AudioFrame) -> None:
        recorder.feed(frame)
        if state["decision"] is None:
            analysis.feed(classifier, frame.pcm, decided)

    def tick_now() -> None:
        # The classifier's clock only decides before the first audio ("a 180/183 and
        # no RTP for rtp.no_rtp_wait"): one timer at that moment, then every
        # TICK_S while it still has neither audio nor a decision. Once audio flows,
        # `feed` decides and no timer runs (the old loop woke every call ten times
        # a second for the whole call).
        nonlocal tick_timer
        tick_timer = None
        if state["decision"] is not None or call.done or classifier.audio_ms:
            return
        decided(classifier.tick(at_ms()))
        if state["decision"] is None:
            tick_timer = loop.call_later(TICK_S, tick)

    tick: Callable[[], None] = tick_now  # rebound at the end (see the finally below)

    def arm_tick(restart: bool = False) -> None:
        nonlocal tick_timer
        if state["decision"] is not None or classifier.audio_ms:
            return
        if restart and tick_timer is not None:
            tick_timer.cancel()
            tick_timer = None
        if tick_timer is None:
            tick_timer = loop.call_later(no_rtp_wait + TICK_SLACK_S, tick)

    async def media_started(info: Any) -> None:
        if info.remote_addr is None or info.codec is None or state["answered_sdp"]:
            return
        state["answered_sdp"] = True
        receiver.answer(MediaFormat(info.codec, int(info.payload_type or 0)), info.remote_addr)

    def provisional(status: int) -> None:
        if 180 <= status < 200:
            state["progress"] = True  # media no SDP named is no longer played (rtp.py)
        sig = call.outcome.signalling()
        decided(classifier.on_signalling(sig, at_ms()))
        # the classifier's no-RTP clock starts at the first 180/183 (a 100 Trying
        # before it does not count): time the first tick from that moment
        media_now = sig.ringing or sig.early_media
        arm_tick(restart=media_now and not state["media_seen"])
        state["media_seen"] = state["media_seen"] or media_now

    def answered(_status: int) -> None:
        if state["answered"]:
            return
        state["answered"] = True
        on_answered()
        decided(classifier.on_signalling(call.outcome.signalling(), at_ms()))
        if state["decision"] is None and classifier.answer_at is not None:
            # a 2xx that came without a 180: the audio may yet say it was the carrier
            # answering to play an announcement (sip.answer_listen); then `answered`
            loop.call_later(
                cfg.sip.answer_listen + TICK_SLACK_S,
                lambda: None if call.done else decided(classifier.tick(at_ms())),
            )
        arm_tick()

    try:
        call = ua.call(
            item.phone,
            local_rtp=(local_ip, lease.port),
            ring_timeout=cfg.sip.ring_timeout,
            on_early_media=media_started,
            on_provisional=provisional,
            on_answered=answered,
        )
    except BaseException:
        lease.release()  # a number SIP cannot carry: the daemon records a local failure
        raise
    # listening before the INVITE leaves: media that outruns its 183, or whose 183
    # was lost, is heard (media/rtp.py, "Media before the answer")
    receiver = await RtpReceiver.listen(
        lease,
        sink,
        peer_ip=ua.account.host.host,
        unanswered_ok=lambda: not state["progress"] and not state["answered"],
        options=StreamOptions(drop_fraction=side.drop, drop_seed=hash(item.phone) & 0xFFFF),
    )
    structlog.contextvars.bind_contextvars(call_id=call.call_id)
    stuck: asyncio.Future[None] = loop.create_future()

    def mark_stuck() -> None:
        if not stuck.done():
            stuck.set_result(None)

    stuck_timer = loop.call_later(longest_call_s(cfg), mark_stuck)
    ended = asyncio.ensure_future(call.ended())
    stop = asyncio.ensure_future(cancel.wait())
    try:
        await call.start()
        # Nothing polls: the call's end, the daemon's stop and the stuck limit wake us;
        # answers, provisionals, audio and the no-RTP clock arrive through the hooks.
        waiting: set[asyncio.Future[Any]] = {ended, stop, stuck}
        while not ended.done():
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if stop.done() and stop in waiting:
                waiting.discard(stop)
                if state["decision"] is None:
                    state["decision"] = "stopped"
                    call.cancel("daemon stopping")
                stuck_timer.cancel()
                stuck_timer = loop.call_later(CALL_GIVE_UP_AT_STOP, mark_stuck)
            if stuck.done() and not ended.done() and stop.done():
                log.warning("call_given_up_at_stop", phone=item.phone)
                break
            if stuck.done() and not ended.done():
                log.warning("call_stuck", phone=item.phone)
                call.hangup()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(ended), 5.0)
                break
        outcome = ended.result() if ended.done() else call.outcome
    finally:
        stuck_timer.cancel()
        if tick_timer is not None:
            tick_timer.cancel()
        # `tick` arms itself again, so its closure held it: a reference cycle that
        # kept the whole call (classifier, recorder, receiver) past its end until a
        # full collection found it (agent/heap.py). Rebound, the call goes when
        # this frame does; a hook of a call given up as stuck arms a timer that
        # does nothing.
        tick = _nothing
        stop.cancel()
        if not ended.done():
            ended.cancel()
        rtp = (await receiver.close()).as_dict()  # releases the lease
    # in memory, close() only encodes what is left (no disk): not worth a thread hop
    result = recorder.close() if in_memory else await asyncio.to_thread(recorder.close)
    sig = outcome.signalling()
    final = classifier.finish(sig)
    times = outcome.times
    invite = times.invite or time.time()
    ring_end = times.answer or times.end or time.time()
    decided_ms = final.decided_ms
    fields: dict[str, Any] = {
        "sipCode": "" if outcome.sip_code is None else outcome.sip_code,
        "sipReason": outcome.reason or "",
        "q850Cause": "" if outcome.q850_cause is None else outcome.q850_cause,
        "answered": int(bool(outcome.answered)),
        "earlyMedia": int(bool(outcome.early_media)),
        "startedAt": int(invite * 1000),
        "ringMs": max(0, int((ring_end - invite) * 1000)),
        "mediaMs": result.frames * 1000 // 8000,
        # (ext) beyond PROTOCOL.md's list, read by the embedded server: without them a
        # 487 after our own CANCEL reads as "not ours" there
        "ringing": int(bool(outcome.ringing)),
        "cancelledByUs": int(bool(outcome.cancelled_by_us)),
        "cancelReason": outcome.signalling().cancel_reason,
        "localVerdict": final.verdict.value,
        "localConfidence": round(final.confidence, 3),
    }
    # A call's one line at info (client_id, extension and call_id come from the bound
    # context). It replaced five (call_ended, rtp_closed, call_classified, call_done,
    # uploaded: now debug): at 100 lines, ~55 calls a second, those were ~8,000 lines
    # per 30 s, near journald's default rate limit (10,000 per 30 s per service), past
    # which it drops lines, warnings included.
    log.info(
        "call_classified",
        phone=item.phone,
        verdict=final.verdict.value,
        evidence=final.evidence.get("kind"),
        decided_ms=decided_ms,
        media_ms=fields["mediaMs"],
        sip_code=outcome.sip_code,
        q850=outcome.q850_cause,
        ended_by=outcome.ended_by,
        call_ms=int((loop.time() - t0) * 1000),
        rtp=rtp,
    )
    return CallRecord(
        result.path, fields, final.verdict.value, result.data, _fault(outcome), final.transient
    )


def _fault(outcome: Any) -> str:
    """The PBX fault a call met (`CallRecord.pbx_fault`, Daemon._pbx_fault), else ""."""
    if outcome.answered:
        return ""
    if outcome.local_code and outcome.sip_code == 408:
        return "no_response"  # Timer B: not a word, not even 100 Trying
    if outcome.sip_code in (401, 407):
        return "credentials"  # our digest answered and challenged again, or refused
    return ""


# ----------------------------------------------------------------- entry
