"""`kneepain review serve` as a real uvicorn process on 127.0.0.1: TLS, and bodies capped before reading.

The 200 MB body is streamed from a generator (this test never holds it), and the server's memory
is read from /proc while it arrives.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from review_fixtures import free_port, make_review_run, make_study, rss_kib, start_server

BODY_MB = 200


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[subprocess.Popen[bytes], int, dict]]:
    root = tmp_path_factory.mktemp("server")
    run = make_review_run(root)
    tokens = make_study(run, root / "review.sqlite")
    port = free_port()
    process = start_server(run, root / "review.sqlite", port)
    try:
        yield process, port, tokens
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=10)


def send_streamed(port: int, head: bytes, chunks: Iterator[bytes]) -> tuple[bytes, int]:
    """Send a request head, then body chunks until the server answers or closes the connection.

    Returns the response's head and how many body bytes were sent before it came.
    """
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(head)
        connection.setblocking(False)
        answer = b""
        for chunk in chunks:
            with contextlib.suppress(BlockingIOError):
                answer += connection.recv(65536)
            if answer:
                break
            try:
                connection.setblocking(True)
                connection.settimeout(10)
                connection.sendall(chunk)
                connection.setblocking(False)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
        connection.setblocking(True)
        connection.settimeout(10)
        try:
            while b"\r\n\r\n" not in answer:
                more = connection.recv(65536)
                if not more:
                    break
                answer += more
        except ConnectionResetError:
            pass
    return answer, sent


def megabytes(count: int, chunked: bool) -> Iterator[bytes]:
    block = b"x" * (1024 * 1024)
    for _ in range(count):
        yield f"{len(block):x}\r\n".encode() + block + b"\r\n" if chunked else block


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_200_mb_body_gets_413_and_server_memory_stays_small(server: tuple, chunked: bool) -> None:
    process, port, tokens = server
    before, peak_before = rss_kib(process.pid)
    length = b"Transfer-Encoding: chunked" if chunked else f"Content-Length: {BODY_MB * 1024 * 1024}".encode()
    head = (
        b"POST /api/cases/9100001/review HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + f"X-Review-Token: {tokens['alice']}\r\n".encode()
        + length
        + b"\r\n\r\n"
    )
    answer, sent = send_streamed(port, head, megabytes(BODY_MB, chunked))
    after, peak = rss_kib(process.pid)
    print(
        f"200 MB body ({'chunked' if chunked else 'content-length'}): {sent / 2**20:.1f} MiB sent before the "
        f"answer; server RSS {before / 1024:.0f} -> {after / 1024:.0f} MiB, peak (VmHWM) "
        f"{peak_before / 1024:.0f} -> {peak / 1024:.0f} MiB"
    )
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"nosniff" in answer.lower()
    assert peak < 200 * 1024 and after - before < 20 * 1024
    assert process.poll() is None
    # the server still answers normally afterwards
    ok = httpx.get(f"http://127.0.0.1:{port}/api/cases", headers={"X-Review-Token": tokens["alice"]})
    assert ok.status_code == 200


def test_unauthenticated_large_bodies_are_refused_too(server: tuple) -> None:
    _, port, _ = server
    refused = httpx.post(
        f"http://127.0.0.1:{port}/api/cases/9100001/review", content=b"{" + b" " * 100_000 + b"}"
    )
    assert refused.status_code == 413 and refused.headers["x-content-type-options"] == "nosniff"


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A throwaway certificate for 127.0.0.1 made with the system's openssl."""
    if shutil.which("openssl") is None:
        reason = "openssl is not installed (apt-get install openssl): the TLS test needs it"
        if "CI" in os.environ:
            pytest.fail(f"{reason}; CI must run the TLS test", pytrace=False)
        pytest.skip(reason)
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def test_tls_serves_https_and_the_sign_in_cookie_is_secure(tmp_path: Path) -> None:
    run = make_review_run(tmp_path)
    db = tmp_path / "review.sqlite"
    tokens = make_study(run, db)
    cert, key = self_signed(tmp_path)
    port = free_port()
    trust = ssl.create_default_context(cafile=str(cert))
    tls = ("--ssl-certfile", str(cert), "--ssl-keyfile", str(key))
    process = start_server(run, db, port, *tls, scheme="https", verify=trust)
    try:
        with httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=trust) as client:
            moved = client.get(f"/cases/9100001?token={tokens['alice']}", follow_redirects=False)
            assert moved.status_code == 303 and moved.headers["location"] == "/cases/9100001"
            cookie = moved.headers["set-cookie"]
            assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
            page = client.get("/cases/9100001")  # the cookie now signs in
            assert page.status_code == 200 and "Not for clinical use" in page.text
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/", timeout=3)  # no plain HTTP on the TLS port
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=10)
