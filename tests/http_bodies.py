"""Request bodies as real clients send them: in pieces (curl at a limited rate), chunked
beyond a limit, or never (the headers promise a body that does not come)."""

from __future__ import annotations

import asyncio


async def exchange(port: int, head: bytes, *pieces: bytes, wait_s: float = 30) -> bytes:
    """Send ``head`` and then each piece a moment apart over one connection; the answer's
    status line and body. With no pieces, the body the headers promise never comes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        for piece in pieces:
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(piece)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(65536), wait_s)
    finally:
        writer.close()
    status, _, rest = answer.partition(b"\r\n")
    return status + b"\n" + rest.partition(b"\r\n\r\n")[2]


def post_head(path: str, headers: dict[str, str], length: int | None) -> bytes:
    """A POST's request line and headers: Content-Length ``length``, or chunked when None."""
    fields = {"Host": "127.0.0.1", **headers,
              **({"Content-Length": str(length)} if length is not None
                 else {"Transfer-Encoding": "chunked"})}
    return (f"POST {path} HTTP/1.1\r\n"
            + "".join(f"{k}: {v}\r\n" for k, v in fields.items()) + "\r\n").encode()


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


async def curl_slowly(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
    """curl POSTs ``body`` at 1 kB/s, so that it arrives in pieces; status and body."""
    args = ["curl", "-sS", "--limit-rate", "1000", "-o", "-", "-w", "\n%{http_code}",
            "--data-binary", "@-", url]
    for name, value in headers.items():
        args[1:1] = ["-H", f"{name}: {value}"]
    proc = await asyncio.create_subprocess_exec(*args, stdin=asyncio.subprocess.PIPE,
                                                stdout=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(proc.communicate(body), 60)
    text, _, code = out.decode().rpartition("\n")
    return int(code), text
