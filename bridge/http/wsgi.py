"""One HTTP listener of the bridge: an asyncio loop that reads requests, a thread pool that runs the Flask app.

Why this and not a ready-made server: the bridge must stay one process (it
owns the libtorrent session), cannot use gevent (``wait_for_alert`` would
block every request), must survive slow clients, must ``sendfile()`` store
hits, and its fleet listener must hand a TLS client certificate to the view.
No server does all of it: gunicorn's gthread worker reads a request in a
worker thread with no deadline once the first byte arrived (500 slow
connections hold every thread); its ASGI worker, uvicorn and hypercorn have
neither sendfile nor the peer certificate; waitress has no sendfile and no
TLS; aiohttp-wsgi and tornado's WSGIContainer buffer whole responses.  So
aiohttp parses requests on the loop (a slow client costs a coroutine, not a
thread; small bodies are read whole first), the app runs in a thread only once the whole
request is in, a ``wsgi.file_wrapper`` body goes out with ``loop.sendfile``
(no thread at all), and streamed bodies are pumped from the thread with
back-pressure and a write deadline: on a plain TCP connection with a known
length the thread writes the socket itself (the loop is not woken per chunk),
else each chunk goes through the loop.
"""
from __future__ import annotations

import asyncio
import io
import logging
import os
import select
import socket
import ssl
import sys
import threading
import time
from concurrent.futures import CancelledError, ThreadPoolExecutor
from urllib.parse import unquote_to_bytes

from aiohttp import web
from aiohttp.web_log import AccessLogger

from layerswarm.bridge.format.directsend import SLOT_KEY, Sent, SocketSlot
from layerswarm.bridge.format.errors import UserError
from layerswarm.bridge.format.threadnames import name_this_thread

log = logging.getLogger("layerswarm.serve")

SERVER = "layerswarm-bridge"
BUFFERED_BODY = 1 << 20   # bodies up to this are read whole before the app runs
MIN_SENDFILE_RATE = 256 << 10   # a sendfile()d answer slower than this (after write_timeout) is dropped


class FileWrapper:
    """``wsgi.file_wrapper``: the server sends ``Content-Length`` bytes from the file's current offset."""

    def __init__(self, filelike, blksize: int = 1 << 20):
        self.filelike = filelike
        self.blksize = blksize

    def __iter__(self):   # what a server without sendfile would do (and the Flask test client does)
        while chunk := self.filelike.read(self.blksize):
            yield chunk

    def close(self) -> None:
        self.filelike.close()


class Listener:
    """Serve ``app`` (WSGI) on ``address`` with ``threads`` app threads and a loop thread of its own."""

    def __init__(self, name: str, app, address: str, threads: int, *, write_timeout: float = 60.0,
                 idle_timeout: float = 30.0, grace: float = 5.0, ssl_context: ssl.SSLContext | None = None,
                 access_log: bool = False, backlog: int = 1024):
        host, _, port = address.rpartition(":")
        self.name, self.app, self.host, self.port = name, app, host.strip("[]"), int(port)
        self.write_timeout, self.idle_timeout, self.grace = write_timeout, idle_timeout, grace
        self.ssl_context, self.backlog, self.access_log = ssl_context, backlog, access_log
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix=f"{name}-app", initializer=name_this_thread)
        self.loop = asyncio.new_event_loop()
        self._runner: web.ServerRunner | None = None
        self._lock = threading.Lock()
        self._writes: set = set()     # chunk writes app threads wait on
        self._slots: set = set()      # sockets offered to bodies (withdrawn when the listener stops)
        self._stopping = False
        self._in_flight = 0           # requests being answered (touched on the loop only)
        self._thread = threading.Thread(target=self._run_loop, name=f"{name}-loop", daemon=True)

    def start(self) -> None:
        """Bind (a UserError naming the address when it cannot) and start serving."""
        try:
            sock = socket.create_server((self.host, self.port), family=_family(self.host), backlog=self.backlog)
        except OSError as exc:
            raise UserError(f"{self.name} listener cannot listen on {self.host}:{self.port}: "
                            f"{exc.strerror or exc}") from None
        self.port = sock.getsockname()[1]
        self.loop.run_until_complete(self._serve(sock))
        self._thread.start()

    def _run_loop(self) -> None:
        name_this_thread()
        self.loop.run_forever()

    async def _serve(self, sock: socket.socket) -> None:
        # A connection that has not sent a whole request within idle_timeout is closed: slow
        # clients cost the loop a little memory for that long, never an app thread.
        # Header fields up to 16 KiB reach the app, which refuses credentials over 8 KiB with a
        # registry error body (authz/credentials.py); beyond that the parser answers a bare 400.
        server = web.Server(self._handle, keepalive_timeout=self.idle_timeout, max_line_size=8190,
                            max_field_size=16384, access_log_class=AccessLogger,
                            access_log=logging.getLogger(f"layerswarm.access.{self.name}") if self.access_log
                            else None)
        # shutdown_timeout: what is left after _shutdown() cut the streams only needs to unwind.
        self._runner = web.ServerRunner(server, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.SockSite(self._runner, sock, ssl_context=self.ssl_context, backlog=self.backlog).start()

    def stop(self) -> None:
        """Stop accepting, give in-flight requests the grace time, then cut what is left."""
        if self._thread.is_alive():
            fut = asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop)
            try:
                fut.result(self.grace + 10)
            except Exception as exc:  # noqa: BLE001 - shutting down: report and go on
                log.warning("%s listener: shutdown: %s", self.name, exc.__class__.__name__)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5)
            if not self._thread.is_alive():
                self.loop.close()
        self.pool.shutdown(wait=False, cancel_futures=True)

    async def _shutdown(self) -> None:
        loop = asyncio.get_running_loop()
        for site in list(self._runner.sites):
            await site.stop()
        self._runner.server.pre_shutdown()   # idle keep-alive connections go now
        deadline = loop.time() + self.grace
        while self._in_flight and loop.time() < deadline:
            await asyncio.sleep(0.05)
        # Streams still running after the grace time are cut: their pending writes fail at once,
        # so the app threads pumping them stop instead of waiting out the write deadline.
        self._stopping = True
        for conn in self._runner.server.connections:
            if conn.transport is not None:
                conn.transport.abort()
        with self._lock:
            for write in self._writes:
                write.cancel()
            for slot in self._slots:   # a body writing to its socket itself hands back within 0.5 s
                slot.fd = None
        await self._runner.cleanup()

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        self._in_flight += 1
        try:
            return await self._answer(request)
        finally:
            self._in_flight -= 1

    async def _answer(self, request: web.BaseRequest) -> web.StreamResponse:
        # Small bodies (all a client sends) are read whole on the loop before the app gets a thread;
        # a large one (an operator seeding a layer) is streamed to the app, which reads it only once
        # the access table let the caller in.
        if not request.body_exists:
            body = io.BytesIO()
        elif request.content_length is not None and request.content_length <= BUFFERED_BODY:
            body = io.BytesIO(await request.read())
        else:
            body = io.BufferedReader(_StreamedBody(request.content, self.loop, self.write_timeout))
        loop = asyncio.get_running_loop()
        environ = _environ(request, body, "https" if self.ssl_context else "http")
        if self.ssl_context is None:   # the socket _pump_socket may offer the app (format/directsend.py)
            environ[SLOT_KEY] = SocketSlot()
        status, headers, chunks, first = await loop.run_in_executor(self.pool, _start, self.app, environ)
        code, _, reason = status.partition(" ")
        resp = web.StreamResponse(status=int(code), reason=reason or None)
        resp.headers["Server"] = SERVER   # not the framework's name and version
        for k, v in headers:
            resp.headers.add(k, v)
        pumped = False
        try:
            await resp.prepare(request)
            if isinstance(chunks, FileWrapper) and request.method != "HEAD":
                f = chunks.filelike
                count = int(resp.headers.get("Content-Length", "0"))
                # No thread, no progress callback: bound the whole send by a floor rate instead.
                await asyncio.wait_for(loop.sendfile(request.transport, f, f.tell(), count),
                                       self.write_timeout + count / MIN_SENDFILE_RATE)
            elif first is not None:
                await resp.write(first)
                fd = await self._socket_for_body(request, resp)
                # From here the pumping thread closes the body (and the socket's duplicate): shielded, so
                # that it runs even if this handler is cancelled before a pool thread took it.
                pumped = True
                if fd is not None:
                    await asyncio.shield(loop.run_in_executor(self.pool, self._pump_socket, chunks, fd,
                                                              environ.get(SLOT_KEY)))
                else:
                    await asyncio.shield(loop.run_in_executor(self.pool, self._pump, chunks, resp, request))
            await resp.write_eof()
        except Exception as exc:  # noqa: BLE001 - the headers are out: the only honest answer is a cut
            # (the app logged its own failures; a client that left or a stop is routine)
            log.log(logging.DEBUG if isinstance(exc, ConnectionError) else logging.WARNING,
                    "%s listener: %s %s cut: %s: %s", self.name, request.method, request.path[:200],
                    exc.__class__.__name__, exc)
            if request.transport is not None:
                request.transport.abort()
        finally:
            if not pumped:
                await loop.run_in_executor(self.pool, _close, chunks)
        return resp

    def _pump(self, chunks, resp: web.StreamResponse, request: web.BaseRequest) -> None:
        """In an app thread: each chunk onto the loop, waiting while the client is slow (up to the deadline).

        One write stays in flight while the next chunk is made: the thread waits for the write before
        last, which has usually finished by then, so a streamed chunk costs the thread one wake-up (its
        next chunk), not two.  At most two chunks are queued on the loop (resp.write drains each)."""
        pending = None
        try:
            for chunk in chunks:
                if chunk:
                    if self._stopping:
                        raise ConnectionError("listener stopped")
                    previous, pending = pending, self._submit(resp, chunk)
                    if previous is not None:
                        self._wait(request, previous)
            if pending is not None:
                self._wait(request, pending)
                pending = None
        finally:
            if pending is not None:
                pending.cancel()
                self._forget(pending)
            _close(chunks)

    def _client_stalled(self) -> ConnectionError:
        """The error that cuts an answer whose client took nothing of it for the write deadline."""
        return ConnectionError(f"client read nothing for {self.write_timeout:g}s")

    async def _socket_for_body(self, request: web.BaseRequest, resp: web.StreamResponse) -> int | None:
        """A duplicate of the connection's socket for the pumping thread to write the rest of the body to,
        once the loop has sent everything before it; None where the loop must write: TLS (the bytes
        are encrypted on the loop), a body without Content-Length (aiohttp frames it in chunks), HEAD.

        Per chunk the loop is not woken and no coroutine, task or future is made: 0.74 vs 1.45 ms of CPU
        per MB with a 256 KiB chunk every 20 ms to 3 readers (scripts/bench_listener.py)."""
        transport = request.transport
        if (self.ssl_context is not None or transport is None or transport.is_closing()
                or request.method == "HEAD" or "Content-Length" not in resp.headers):
            return None
        sock = transport.get_extra_info("socket")
        if sock is None:
            return None
        give_up = self.loop.time() + self.write_timeout
        while transport.get_write_buffer_size():   # the headers and first chunk, usually gone already
            if transport.is_closing():
                return None
            if self.loop.time() > give_up:
                raise self._client_stalled()
            await asyncio.sleep(0.005)
        # A duplicate, so that the loop closing the connection (a client gone, a stop) never lets this
        # thread write to a recycled descriptor; it shares the socket's non-blocking mode.
        return os.dup(sock.fileno())

    def _pump_socket(self, chunks, fd: int, slot: SocketSlot | None = None) -> None:
        """In an app thread: the rest of the body straight to the socket (``fd``, closed here), waiting
        while the client is slow, up to the write deadline, and checking for a stop meanwhile.  The
        socket is offered to the app in ``slot``: what the app wrote itself comes as a Sent marker."""
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        if slot is not None:
            with self._lock:
                if not self._stopping:
                    slot.fd = fd
                    self._slots.add(slot)
        try:
            for chunk in chunks:
                if chunk.__class__ is Sent:
                    if self._stopping:
                        raise ConnectionError("listener stopped")
                    continue
                view = memoryview(chunk)
                stuck_since = None
                while view:
                    if self._stopping:
                        raise ConnectionError("listener stopped")
                    try:
                        view = view[os.write(fd, view):]
                        stuck_since = None
                    except BlockingIOError:
                        now = time.monotonic()
                        stuck_since = stuck_since or now
                        left = stuck_since + self.write_timeout - now
                        if left <= 0:
                            raise self._client_stalled() from None
                        poller.poll(1000 * min(0.25, left))   # in slices: a stop is seen within 0.25 s
        finally:
            if slot is not None:
                with self._lock:
                    slot.fd = None
                    self._slots.discard(slot)
            os.close(fd)
            _close(chunks)

    def _submit(self, resp: web.StreamResponse, chunk: bytes):
        fut = asyncio.run_coroutine_threadsafe(resp.write(chunk), self.loop)
        with self._lock:
            self._writes.add(fut)
        return fut

    def _forget(self, fut) -> None:
        with self._lock:
            self._writes.discard(fut)

    def _wait(self, request: web.BaseRequest, fut) -> None:
        try:
            fut.result(self.write_timeout)
        except TimeoutError:
            fut.cancel()
            if request.transport is not None:
                self.loop.call_soon_threadsafe(request.transport.abort)
            raise self._client_stalled() from None
        except CancelledError:
            raise ConnectionError("listener stopped") from None
        finally:
            self._forget(fut)


def _start(app, environ: dict):
    """In an app thread: run the app up to its first body chunk (the headers are final by then)."""
    started = []

    def start_response(status, headers, exc_info=None):
        if exc_info and started:
            raise exc_info[1].with_traceback(exc_info[2])
        started[:] = [status, headers]
        return _no_write

    result = app(environ, start_response)
    if isinstance(result, FileWrapper):
        return started[0], started[1], result, None
    chunks = iter(result)
    try:
        first = next(chunks, b"")
    except BaseException:
        _close(result)
        raise
    return started[0], started[1], _Rest(chunks, result), first


class _Rest:
    """The chunks after the first, closed through the app's own iterable (PEP 3333)."""

    def __init__(self, chunks, result):
        self.chunks, self.result = chunks, result

    def __iter__(self):
        return self.chunks

    def close(self) -> None:
        _close(self.result)


def _close(result) -> None:
    close = getattr(result, "close", None)
    if close is not None:
        close()


def _no_write(data: bytes) -> None:
    raise RuntimeError("the bridge's apps return bodies; write() is not supported")


class _StreamedBody(io.RawIOBase):
    """``wsgi.input`` for a large body: the app thread reads what the loop received, with a deadline."""

    def __init__(self, content, loop, timeout: float):
        self.content, self.loop, self.timeout = content, loop, timeout

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        fut = asyncio.run_coroutine_threadsafe(self.content.read(len(buf)), self.loop)
        try:
            data = fut.result(self.timeout)
        except TimeoutError:
            fut.cancel()
            raise ConnectionError(f"client sent nothing for {self.timeout:g}s") from None
        buf[:len(data)] = data
        return len(data)


def _environ(request: web.BaseRequest, body, scheme: str) -> dict:
    path, _, query = request.raw_path.partition("?")
    peer = request.transport.get_extra_info("peername") if request.transport else None
    sock = request.transport.get_extra_info("sockname") if request.transport else None
    environ = {
        "REQUEST_METHOD": request.method,
        "SCRIPT_NAME": "",
        "PATH_INFO": unquote_to_bytes(path).decode("latin-1"),
        "RAW_URI": request.raw_path,
        "QUERY_STRING": query,
        "SERVER_PROTOCOL": f"HTTP/{request.version.major}.{request.version.minor}",
        "SERVER_NAME": sock[0] if sock else "",
        "SERVER_PORT": str(sock[1]) if sock else "",
        "REMOTE_ADDR": peer[0] if peer else "",
        "REMOTE_PORT": str(peer[1]) if peer else "",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scheme,
        "wsgi.input": body,
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        "wsgi.file_wrapper": FileWrapper,
        # The verified client certificate on a TLS listener that asks for one (None otherwise).
        "layerswarm.peercert": request.transport.get_extra_info("peercert") if request.transport else None,
    }
    if request.content_length is not None:
        environ["CONTENT_LENGTH"] = str(request.content_length)
    for name, value in request.raw_headers:
        key = name.decode("latin-1").upper()
        if "_" in key:
            continue   # HTTP_X_Y must not be forgeable as X_Y (as gunicorn and nginx do)
        key = key.replace("-", "_")
        value = value.decode("latin-1")
        if key == "CONTENT_TYPE":
            environ["CONTENT_TYPE"] = value
        elif key != "CONTENT_LENGTH":
            key = "HTTP_" + key
            environ[key] = f"{environ[key]},{value}" if key in environ else value
    return environ


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET
