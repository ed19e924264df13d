"""
The uppercase service over streams: whatever arrives is uppercased and written
back at once, with no framing, so one-shot, interactive and bulk clients all work.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IDelayedCall, IHalfCloseableProtocol, IPushProducer, ITransport
from twisted.internet.protocol import Protocol, ServerFactory, connectionDone
from twisted.protocols.policies import ProtocolWrapper
from twisted.python.failure import Failure
from zope.interface import implementer

from capserv.protocols._twisted import (
    is_proxy_protocol,
    proxy_header_read,
    reset_unnoticed,
    stream_writer,
    unsent_bytes,
)
from capserv.protocols.accesslog import log_connection, lost_reason
from capserv.protocols.config import CapservConfig, Clock
from capserv.protocols.connections import ConnectionSet
from capserv.protocols.limits import Admission
from capserv.protocols.state import SharedState
from capserv.protocols.stats import Reason, TCPStats, counts
from capserv.protocols.text import Uppercaser, is_ascii_compatible, lookup_encoding
from capserv.protocols.wrappers import lend_half_close

__all__ = ["UppercaseFactory", "UppercaseProtocol"]


@implementer(IHalfCloseableProtocol, IPushProducer)
class UppercaseProtocol(Protocol):
    """
    Uppercase one connection's byte stream, with half-close and an idle
    timeout, and log one line when it closes (unless ``access_log=False``).
    It is its own streaming producer: a client that never reads makes it stop
    reading, so the server cannot buffer without bound.
    """

    factory: UppercaseFactory
    transport: ITransport
    peer: IAddress | None = None  # as the listening port gave it
    _codec: Uppercaser | None = None  # made at the first chunk that is not plain ASCII
    reading_paused = False  # because the reply backed up
    _abort_call: IDelayedCall | None = None
    closing = False  # on its way out (end of input, idle, shutdown)
    _close_when_drained = False
    _lost = False  # connectionLost ran: nothing is scheduled from then on
    _reason = ""  # why it ended, if capserv knows (else lost_reason says)
    _awaiting_header = False  # behind HAProxy, until the PROXY header is read
    _counted_host: bytes | None = None  # the source network the per-IP limit counted
    _is_refused = False
    _registered = False  # registered as the transport's producer
    bytes_in = 0
    bytes_out = 0
    started = 0.0
    _last_activity = 0.0

    def connectionMade(self) -> None:
        factory = self.factory
        transport = self.transport
        clock = self._clock = factory._clock or factory.clock  # the property once, to find the reactor
        config = factory.config
        self._idle_timeout = config.idle_timeout
        proxied = False
        if isinstance(transport, ProtocolWrapper):  # TLS, PROXY, timeouts...: not the common case
            lend_half_close(self)
            proxied = is_proxy_protocol(transport)
        if not proxied:  # `UppercaseFactory._admit`, inline: every connection comes here
            key = factory.limits.take(self.peer)
            if key is None:
                self._refused()
                return
            self._counted_host = key
            factory.stats.connections_total += 1
        factory.connections.add(self)
        self.started = self._last_activity = clock.seconds()
        if type(transport) in factory._plain_kinds:
            self._write = transport.write
        else:
            self._write = self._set_up_writes(transport, config)
        transport.registerProducer(self, True)  # type: ignore[attr-defined]
        self._registered = True
        if proxied:  # the client's address comes in the PROXY header: count it at the first data
            self._awaiting_header = True
            self.dataReceived = self._first_proxied_data  # type: ignore[method-assign]

    def _set_up_writes(self, transport: ITransport, config: CapservConfig) -> Any:
        """
        The transport's write buffer at ``high_water``, and the ``write`` to use; a kind of transport
        whose buffer already was and whose own ``write`` is used is remembered (`_plain_kinds`), as every
        transport of a kind starts with the same buffer (Twisted's TCP: a class attribute; native: the loop's).
        """
        size = getattr(transport, "bufferSize", None)
        if isinstance(size, int) and size != config.high_water:
            transport.bufferSize = config.high_water  # type: ignore[attr-defined]
        write = stream_writer(transport, config.fast_paths)
        if size == config.high_water and getattr(write, "__self__", None) is transport:
            self.factory._plain_kinds.add(type(transport))
        return write

    def dataReceived(self, data: bytes) -> None:
        self._last_activity = self._clock.seconds()
        self.bytes_in += len(data)
        codec = self._codec
        if codec is None:
            if self.factory.ascii_upper and data.isascii():
                reply = data.upper()
            else:
                codec = self._codec = self.factory.codec()
                reply = codec.feed(data)
        else:
            reply = codec.feed(data)
        if reply:
            self.bytes_out += len(reply)
            self._write(reply)

    def _first_proxied_data(self, data: bytes) -> None:
        del self.dataReceived  # back to the class's method
        self._awaiting_header = False
        real = self.peer = self.transport.getPeer()
        if not self.factory._admit(self, real):
            self._refused()
            return
        self.dataReceived(data)

    def _ignore(self, data: bytes) -> None:
        pass

    def _refused(self) -> None:
        """Over the per-IP limit: close at once, serving nothing."""
        self.closing = self._is_refused = True
        self.dataReceived = self._ignore  # type: ignore[method-assign]
        self._reason = "refused"
        self._unregister_throttle()
        self.transport.loseConnection()

    def _header_failed(self) -> None:
        """Behind HAProxy, no valid PROXY header came (the wrapper closes on a bad one): a refusal."""
        self._awaiting_header, self._is_refused = False, True
        bad = getattr(self.transport, "disconnecting", False)
        what = "bad PROXY header" if bad else "no PROXY header before end of input"
        self.factory.limits.refuse(self.peer, Reason.PROXY_HEADER, what=what)

    def readConnectionLost(self) -> None:
        """The peer has finished sending: send what is still owed, then close."""
        if self._awaiting_header:
            if not proxy_header_read(self.transport):
                self._header_failed()
                self._refused()
                return
            self._first_proxied_data(b"")  # a header and no data: count by the real peer
            if self._is_refused:
                return
        self._last_activity = self._clock.seconds()
        if self._codec is not None:
            tail = self._codec.flush()
            if tail:
                self.bytes_out += len(tail)
                self.transport.write(tail)
        self._reason = "end of input"
        if not self.closing:  # close once what is owed is sent; if the reply backed up, once it has drained
            if self.reading_paused:
                self.closing = self._close_when_drained = True
            else:
                self._close_now(self._idle_timeout)

    def writeConnectionLost(self) -> None:
        """Nothing more can be sent; there is nothing left to do."""
        if not self.closing:
            self._reason = "output closed"
            self._close_now(self._idle_timeout)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._lost = True
        call, self._abort_call = self._abort_call, None
        if call is not None and call.active():
            call.cancel()
        self.reading_paused = False
        if self._awaiting_header and not self.closing and getattr(self.transport, "disconnecting", False):
            self._header_failed()  # Twisted's PROXY wrapper closed it
        factory = self.factory
        factory._unregister(self)
        if self._is_refused or not factory.config.access_log:
            return  # a refusal was logged (throttled); no line per refusal
        duration = self._clock.seconds() - self.started
        if duration < 0.0:  # the wall clock was stepped back meanwhile
            duration = 0.0
        if not self.closing or not self._reason:
            self._reason = lost_reason(reason)
        log_connection(self.peer, duration, self.bytes_in, self.bytes_out, self._reason)

    def pauseProducing(self) -> None:
        """The reply backed up past the high-water mark: stop reading."""
        if not self.reading_paused:
            self.reading_paused = True
            self.factory.stats.pauses += 1
            self.transport.pauseProducing()  # type: ignore[attr-defined]

    def resumeProducing(self) -> None:
        """The reply drained: read again (or close, if that was waiting)."""
        if self.reading_paused:
            self.reading_paused = False
            # The peer took everything it was owed: that is traffic too.
            self._last_activity = self._clock.seconds()
            if self._close_when_drained:
                self._close_now(self._idle_timeout)
            elif not self.closing:
                self.transport.resumeProducing()  # type: ignore[attr-defined]

    def stopProducing(self) -> None:
        """The connection is going away."""
        self.reading_paused = False

    def _close_now(self, grace: float) -> None:
        """Stop reading, send what is buffered and close; abort after ``grace`` seconds (0: never)."""
        self.closing = True
        self._close_when_drained = False
        transport = self.transport
        if self._registered:  # as _unregister_throttle, inline: every connection comes here
            self._registered = False
            transport.unregisterProducer()  # type: ignore[attr-defined]
        transport.loseConnection()
        # Nothing left to send cannot stall: no abort timer.
        if grace > 0 and self._abort_call is None and not self._lost:
            unsent = getattr(transport, "write_buffer_size", None)  # native's; unsent_bytes knows Twisted's
            if type(unsent) is not int:
                unsent = unsent_bytes(transport)
            if unsent == 0:
                return
            self._abort_call = self._clock.callLater(grace, self._abort)

    def _unregister_throttle(self) -> None:
        """Unregister as the transport's producer, once (some transports raise on a second time)."""
        if self._registered:
            self._registered = False
            self.transport.unregisterProducer()  # type: ignore[attr-defined]

    def _abort(self) -> None:
        # The fired call stays in _abort_call, so no other abort is scheduled.
        self.factory.stats.aborts += 1
        self._reason += ", aborted: peer did not take its last bytes"
        self.transport.abortConnection()  # type: ignore[attr-defined]

    def _check_idle(self, now: float) -> None:
        """Close the connection if it has been idle for the idle timeout (the sweep)."""
        if now - self._last_activity < self._idle_timeout:
            self._check_reset()
            return
        if self.closing and not self._close_when_drained:
            return  # already closing and still silent: the abort timer handles it
        self.factory.stats.idle_timeouts += 1
        self._reason = f"idle for {self._idle_timeout:g}s"
        self._close_now(self.factory.config.abort_grace or 0.001)

    def _check_reset(self) -> bool:
        """Abort the connection if its peer reset it unnoticed (`reset_unnoticed`); whether it was."""
        if self.transport is None or not reset_unnoticed(self.transport):
            return False
        self._abort_with("reset by peer")
        return True

    def _shutdown(self) -> None:
        """A graceful stop's time is up: send what is buffered, abort after the configured grace."""
        if self._abort_call is not None:
            return  # an abort is scheduled or done
        self._reason = "server shutting down"
        self._close_now(self.factory.config.abort_grace or 0.001)

    def _abort_now(self) -> None:
        """Abort at once, unsent bytes and all: a stop forced by a second signal."""
        call = self._abort_call
        if call is not None and call.active():
            call.cancel()
        self.factory.stats.aborts += 1
        self._abort_with("server stopping at once (second signal), aborted")

    def _abort_with(self, reason: str) -> None:
        self._reason, self.closing = reason, True
        self._unregister_throttle()
        self.transport.abortConnection()  # type: ignore[attr-defined]


class _Refused(Protocol):
    """Close a connection over a limit at once, touching nothing else."""

    def connectionMade(self) -> None:
        self.transport.loseConnection()  # type: ignore[union-attr]


class UppercaseFactory(ServerFactory, SharedState):
    """
    `UppercaseProtocol` connections sharing one configuration, clock, `stats`,
    `limits` and open `connections`; listen with it on any stream endpoint::

        serverFromString(reactor, "tcp:50007").listen(UppercaseFactory())
    """

    protocol = UppercaseProtocol  # type: ignore[assignment]
    noisy = False  # capserv logs its own listening and connection lines

    def __init__(self, config: CapservConfig | None = None, clock: Clock | None = None) -> None:
        SharedState.__init__(self, config, clock)
        self.stats = TCPStats()
        self.limits = Admission(self, self.stats)
        self.connections = ConnectionSet(self)
        # bytes.upper alone serves ASCII (the encoding maps it to itself): no codec until other bytes.
        self.ascii_upper = self.config.ascii_only or is_ascii_compatible(lookup_encoding(self.config.encoding))
        # Kinds of transport that need nothing set up (`UppercaseProtocol._set_up_writes`): one check per kind.
        self._plain_kinds: set[type] = set()

    def codec(self) -> Uppercaser:
        """A new incremental codec for one connection's stream."""
        return Uppercaser(self.config.encoding, self.config.ascii_only)

    def buildProtocol(self, addr: IAddress | None) -> Protocol | None:
        """
        A `protocol`, or one that closes at once if a limit says no (not `None`:
        wrapping factories cannot wrap it); the per-IP limit waits for ``connectionMade``.
        """
        refusal = self.limits.refusal(len(self.connections._open))
        if refusal is not None:
            self.limits.refuse(addr, refusal)
            return _Refused()
        protocol: UppercaseProtocol = self.protocol()
        protocol.factory = self
        protocol.peer = addr
        return protocol

    def _admit(self, protocol: UppercaseProtocol, address: IAddress | None) -> bool:
        """Count ``protocol`` against its network's per-IP limit and as served; `False` if refused."""
        key = self.limits.take(address)
        if key is None:
            return False
        protocol._counted_host = key
        self.stats.connections_total += 1
        return True

    def _unregister(self, protocol: UppercaseProtocol) -> None:
        """Forget a closed (or refused) connection: its per-IP count, its bytes to the totals; idempotent."""
        key, protocol._counted_host = protocol._counted_host, None
        if key is not None:
            self.limits.release(key)
        if protocol in self.connections._open:  # the totals first: discarding the last fires drain's waiters
            stats = self.stats
            stats.bytes_in += protocol.bytes_in
            stats.bytes_out += protocol.bytes_out
            self.connections.discard(protocol)

    def snapshot(self) -> dict[str, Any]:
        """The counters as a dict, byte totals including open connections."""
        stats = self.stats
        return {
            "connections_active": len(self.connections),
            "connections_total": stats.connections_total,
            "connections_refused": counts(stats.connections_refused),
            "limited": {str(limit): dict(by_family) for limit, by_family in stats.limited.items()},
            "idle_timeouts": stats.idle_timeouts,
            "aborts": stats.aborts,
            "pauses": stats.pauses,
            "bytes_in": stats.bytes_in + sum(p.bytes_in for p in self.connections),
            "bytes_out": stats.bytes_out + sum(p.bytes_out for p in self.connections),
        }

    def stop_accepting(self) -> None:
        """Refuse every new connection from now on (a graceful stop has begun)."""
        self.limits.accepting = False

    def abort_all(self) -> None:
        """Abort every open connection now (`ConnectionSet.abort_all`)."""
        self.connections.abort_all()

    def drain(self, timeout: float | None = None) -> Deferred[None]:
        """
        Refuse new connections and wait for the open ones; after ``timeout``
        seconds (default ``shutdown_timeout``; 0: at once) close the rest,
        aborting after the configured grace; fires once all have closed.
        """
        self.limits.accepting = False
        return self.connections.drain(self.config.shutdown_timeout if timeout is None else timeout)
