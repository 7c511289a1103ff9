"""A small, strict, crash-tolerant MCAP record scanner (no summary section needed).

rosbags' and mcap's readers need the MCAP footer/summary, which a recording killed with SIGKILL
never writes. This scanner walks the records from the start of the file, decodes chunks, and
stops cleanly at the truncation point of an unfinished file. It reads only what the dataset
library needs: schemas, channels and messages.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from .errors import DatasetError

MAGIC = b"\x89MCAP0\r\n"
_OP_HEADER, _OP_FOOTER, _OP_SCHEMA, _OP_CHANNEL, _OP_MESSAGE, _OP_CHUNK = (
    0x01,
    0x02,
    0x03,
    0x04,
    0x05,
    0x06,
)
_OP_DATA_END = 0x0F
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_REC = struct.Struct("<BQ")
_MSG = struct.Struct("<HIQQ")
_CHUNK = struct.Struct("<QQQI")


@dataclass
class Schema:
    id: int
    name: str
    encoding: str
    data: bytes


@dataclass
class Channel:
    id: int
    schema_id: int
    topic: str
    message_encoding: str


@dataclass
class McapScan:
    path: Path
    schemas: dict[int, Schema] = field(default_factory=dict)
    channels: dict[int, Channel] = field(default_factory=dict)
    messages: list[tuple[int, int, memoryview]] = field(default_factory=list)
    """(channel id, log time ns, CDR bytes) in file order."""
    complete: bool = False
    """The file ends with a valid footer and magic (the writer closed it)."""
    truncated_at: int | None = None
    """Offset of the first byte that does not belong to a complete record (unclosed file)."""
    size: int = 0
    damage: list[str] = field(default_factory=list)
    """What was found damaged and skipped, each naming the file and the chunk or offset."""
    chunks: int = 0
    """Chunks read intact."""


class _Corrupt(Exception):
    """A malformed record (message: what is wrong)."""


def _string(buf, pos: int, end: int) -> tuple[str, int]:
    (n,) = _U32.unpack_from(buf, pos)
    pos += 4
    if pos + n > end:
        raise _Corrupt("string runs past its record")
    return bytes(buf[pos : pos + n]).decode("utf-8"), pos + n


MAX_CHUNK_BYTES = 1 << 30
"""Largest uncompressed chunk accepted: the recorder writes chunks of about an episode (rosbags
closes one at 1 MiB), so a larger size field is damage, refused before any memory is taken."""
_KNOWN_COMPRESSION = ("", "zstd", "lz4")


def _decompress(compression: str, data: memoryview, size: int) -> bytes | memoryview:
    """Decompress a chunk to its ``size`` bytes; _Corrupt if it does not give exactly that."""
    if compression == "":
        return data
    if size > MAX_CHUNK_BYTES:
        raise _Corrupt(f"uncompressed size {size} is over the {MAX_CHUNK_BYTES}-byte limit")
    try:
        if compression == "zstd":
            try:
                from compression import zstd  # Python >= 3.14
            except ImportError:
                from backports import zstd  # the same API before 3.14
            dec = zstd.ZstdDecompressor()
            # max_length bounds the output, so a forged size cannot exhaust memory.
            out = dec.decompress(bytes(data), max_length=size + 1)
        elif compression == "lz4":
            import lz4.frame  # optional: only foreign bags use lz4 chunks

            out = lz4.frame.LZ4FrameDecompressor().decompress(bytes(data), max_length=size + 1)
        else:
            raise _Corrupt(f"unsupported chunk compression {compression!r}")
    except _Corrupt:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoder failure is damaged data
        raise _Corrupt(f"{compression} data does not decompress: {exc}") from None
    return out


def decompress_message(data: bytes | memoryview) -> bytes:
    """One zstd-compressed message (rosbag2's message compression), at most MAX_CHUNK_BYTES."""
    try:
        try:
            from compression import zstd  # Python >= 3.14
        except ImportError:
            from backports import zstd  # the same API before 3.14
        dec = zstd.ZstdDecompressor()
        out = dec.decompress(bytes(data), max_length=MAX_CHUNK_BYTES)
    except Exception as exc:  # noqa: BLE001 - any decoder failure is damaged data
        raise ValueError(f"zstd message does not decompress: {exc}") from None
    if not dec.eof:
        raise ValueError(f"zstd message is truncated or over {MAX_CHUNK_BYTES} bytes")
    return out


def _parse_inner(buf, path_scan: McapScan) -> tuple[dict, dict, list]:
    """Schemas, channels and messages of one chunk's records; _Corrupt if any is malformed."""
    part = McapScan(path=path_scan.path)
    pos, end = 0, len(buf)
    while pos < end:
        if pos + 9 > end:
            raise _Corrupt(f"inner record at {pos} runs past the chunk")
        op, length = _REC.unpack_from(buf, pos)
        body = pos + 9
        if length > end - body:
            raise _Corrupt(f"inner record at {pos} runs past the chunk")
        if op == _OP_CHUNK or op == 0x00:
            raise _Corrupt(f"invalid record (opcode {op}) inside the chunk at {pos}")
        _record_body(part, buf, op, body, body + length, pos)
        pos = body + length
    return part.schemas, part.channels, part.messages


def _record_body(scan: McapScan, buf, op: int, body: int, rec_end: int, pos: int) -> None:
    """Store a schema, channel or message record; other record kinds are skipped."""
    try:
        if op == _OP_MESSAGE:
            if rec_end - body < 22:
                raise _Corrupt(f"message record at {pos} is too short")
            cid, _seq, log_time, _pub = _MSG.unpack_from(buf, body)
            scan.messages.append((cid, log_time, buf[body + 22 : rec_end]))
        elif op == _OP_SCHEMA:
            (sid,) = _U16.unpack_from(buf, body)
            name, p = _string(buf, body + 2, rec_end)
            encoding, p = _string(buf, p, rec_end)
            (n,) = _U32.unpack_from(buf, p)
            if p + 4 + n > rec_end:
                raise _Corrupt(f"schema record at {pos} runs past its end")
            if sid:
                scan.schemas[sid] = Schema(sid, name, encoding, bytes(buf[p + 4 : p + 4 + n]))
        elif op == _OP_CHANNEL:
            cid, sid = struct.unpack_from("<HH", buf, body)
            topic, p = _string(buf, body + 4, rec_end)
            enc, p = _string(buf, p, rec_end)
            scan.channels[cid] = Channel(cid, sid, topic, enc)
    except (struct.error, UnicodeDecodeError) as exc:
        raise _Corrupt(f"record at {pos}: {exc}") from None


def _chunk(buf, pos: int, rec_end: int, *, verify: bool = True) -> tuple[bytes | memoryview, int]:
    """(uncompressed records, stated CRC) of the chunk record at ``pos``; _Corrupt if damaged."""
    body = pos + 9
    if rec_end - body < 40:
        raise _Corrupt("chunk record too short")
    _start, _end, usize, crc = _CHUNK.unpack_from(buf, body)
    (n,) = _U32.unpack_from(buf, body + 28)
    if n > 16 or body + 32 + n + 8 > rec_end:
        raise _Corrupt("chunk record has a malformed compression field")
    try:
        compression = bytes(buf[body + 32 : body + 32 + n]).decode("ascii")
    except UnicodeDecodeError:
        raise _Corrupt("chunk record has a malformed compression field") from None
    p = body + 32 + n
    (csize,) = _U64.unpack_from(buf, p)
    p += 8
    if p + csize != rec_end:
        raise _Corrupt(f"chunk data ({csize} bytes) does not fill its record")
    if compression == "" and csize != usize:
        raise _Corrupt(f"uncompressed chunk holds {csize} bytes, its header says {usize}")
    data = _decompress(compression, buf[p : p + csize], usize)
    if len(data) != usize:
        raise _Corrupt(f"chunk decompresses to {len(data)} bytes, its header says {usize}")
    if verify and crc and zlib.crc32(data) != crc:
        raise _Corrupt("CRC mismatch (the chunk's bytes were changed)")
    return data, crc


def _resync(buf, start: int) -> int | None:
    """Find the next record the scan can trust after damage at ``start - 1``.

    That is a chunk whose (non-zero) CRC checks, or a DataEnd record followed by a summary
    record; None if there is none.
    """
    raw = buf.obj if isinstance(buf, memoryview) else buf
    n = len(buf)
    best = None
    for opcode in (_OP_CHUNK, _OP_DATA_END):
        q = start
        while True:
            q = raw.find(bytes([opcode]), q, best if best is not None else n)
            if q < 0 or q + 9 > n:
                break
            (length,) = _U64.unpack_from(buf, q + 1)
            if length <= n - q - 9 and _trusted(buf, q, opcode, q + 9 + length):
                best = q
                break
            q += 1
    return best


def _trusted(buf, q: int, opcode: int, rec_end: int) -> bool:
    if opcode == _OP_DATA_END:
        if rec_end - q != 13 or rec_end + 9 > len(buf):
            return False
        nxt, length = _REC.unpack_from(buf, rec_end)
        return nxt in (0x02, 0x03, 0x04, 0x08, 0x0B, 0x0D, 0x0E) and length <= len(buf) - rec_end
    try:
        if _CHUNK.unpack_from(buf, q + 9)[3] == 0:
            return False  # without a CRC nothing says these bytes are a real chunk
        _chunk(buf, q, rec_end)
    except (_Corrupt, struct.error):
        return False
    return True


class _Scanner:
    """The top-level walk of one file, collecting damage instead of stopping at it."""

    def __init__(self, scan: McapScan, buf: memoryview, closed: bool) -> None:
        self.scan, self.buf, self.closed = scan, buf, closed
        self.data_end: tuple[int, int] | None = None
        self.last_good = 8
        """End of the last record a CRC vouched for: damage may have begun anywhere after it
        (a damaged length can swallow the records that follow), so resyncing starts there."""
        self.last_resync = -1

    def resync(self) -> int | None:
        """Find the next trusted record after the last trusted one, past the last resync."""
        nxt = _resync(self.buf, max(self.last_good, self.last_resync + 1))
        if nxt is not None:
            self.last_resync = nxt
        return nxt

    def damaged(self, pos: int, reason: str) -> int | None:
        """Note damage at ``pos``; the offset to go on from, or None (nothing trusted after)."""
        nxt = self.resync()
        where = f"{reason} at offset {pos}"
        if nxt is None:
            self.scan.damage.append(f"{self.scan.path}: {where}; the rest of the file is unusable")
        else:
            self.scan.damage.append(f"{self.scan.path}: {where}; going on at offset {nxt}")
        return nxt

    def run(self, pos: int) -> None:
        buf, scan, n = self.buf, self.scan, len(self.buf)
        chunk_no = 0
        while pos < n:
            if pos + 9 > n:
                self.tail(pos)
                return
            op, length = _REC.unpack_from(buf, pos)
            rec_end = pos + 9 + length
            if length > n - pos - 9:
                nxt = self.resync()
                if nxt is None:
                    self.tail(pos)
                    return
                scan.damage.append(
                    f"{scan.path}: record at offset {pos} has a damaged length; "
                    f"going on at offset {nxt}"
                )
                pos = nxt
                continue
            if op == 0x00:
                if not self.closed and not bytes(buf[pos:]).strip(b"\0"):
                    scan.truncated_at = pos  # a zero-filled tail: a file system crash
                    return
                nxt = self.damaged(pos, "invalid record (opcode 0)")
                if nxt is None:
                    return
                pos = nxt
                continue
            if op == _OP_CHUNK:
                chunk_no += 1
                try:
                    data, _crc = _chunk(buf, pos, rec_end)
                    schemas, channels, messages = _parse_inner(memoryview(data), scan)
                except (_Corrupt, struct.error) as exc:
                    nxt = self.damaged(pos, f"chunk {chunk_no}: {exc}")
                    if nxt is None:
                        return
                    pos = nxt
                    continue
                scan.schemas.update(schemas)
                scan.channels.update(channels)
                scan.messages += messages
                scan.chunks += 1
                if _crc:
                    self.last_good = rec_end
            elif op == _OP_DATA_END:
                if length >= 4:
                    self.data_end = (pos, _U32.unpack_from(buf, pos + 9)[0])
            elif op == _OP_FOOTER:
                if self.footer(pos, rec_end):
                    return
                nxt = self.damaged(pos, "a footer record that does not end the file")
                if nxt is None:
                    return
                pos = nxt
                continue
            elif op in (_OP_SCHEMA, _OP_CHANNEL):
                try:
                    # Summary copies, with no CRC of their own until the footer's: they never
                    # replace a definition a chunk's CRC vouched for.
                    part = McapScan(path=scan.path)
                    _record_body(part, buf, op, pos + 9, rec_end, pos)
                    for k, v in part.schemas.items():
                        scan.schemas.setdefault(k, v)
                    for k, v in part.channels.items():
                        scan.channels.setdefault(k, v)
                except _Corrupt as exc:
                    nxt = self.damaged(pos, str(exc))
                    if nxt is None:
                        return
                    pos = nxt
                    continue
            # Header, message indexes, statistics, metadata, attachments, unknown: skipped.
            pos = rec_end
        self.tail(pos)

    def tail(self, pos: int) -> None:
        """Note that the file ends at ``pos`` without a footer."""
        self.scan.truncated_at = pos
        if self.closed:
            self.scan.damage.append(
                f"{self.scan.path}: truncated MCAP file: no footer, the records end at offset "
                f"{pos} of {len(self.buf)} bytes although the bag was closed; recovered like "
                "an unclosed recording"
            )

    def footer(self, pos: int, rec_end: int) -> bool:
        """Accept the footer at ``pos`` if the closing magic ends the file right after it."""
        buf, scan = self.buf, self.scan
        if bytes(buf[rec_end : rec_end + 8]) != MAGIC or rec_end + 8 != len(buf):
            return False
        scan.complete = True
        if not scan.damage:
            self.check_crcs(pos, rec_end)
        return True

    def check_crcs(self, pos: int, rec_end: int) -> None:
        buf, scan = self.buf, self.scan
        if self.data_end is not None and self.data_end[1]:
            at, crc = self.data_end
            if zlib.crc32(buf[:at]) != crc:
                scan.damage.append(
                    f"{scan.path}: data section CRC mismatch (the bytes before offset {at} "
                    "were changed outside the chunks, whose CRCs check)"
                )
        if rec_end - pos >= 29:
            summary_start, _offsets, crc = struct.unpack_from("<QQI", buf, pos + 9)
            if crc and summary_start and summary_start <= pos:
                if zlib.crc32(buf[summary_start : pos + 25]) != crc:
                    scan.damage.append(
                        f"{scan.path}: summary CRC mismatch (the summary section from offset "
                        f"{summary_start} was changed)"
                    )


def scan_mcap(path: str | Path, *, require_complete: bool, strict: bool = False) -> McapScan:
    """Scan an MCAP file, checking every CRC it carries (chunks, data section, summary).

    ``require_complete``: the file belongs to a bag that was closed (it has metadata.yaml), so a
    missing footer is damage. Otherwise (a recording that was killed) the file may end at any
    byte; everything before the last complete record is returned and ``truncated_at`` says where
    the tail starts. Damage (a chunk whose CRC fails or that does not parse, a damaged length,
    a truncated closed file) is skipped: the scan goes on at the next chunk whose CRC checks,
    and ``damage`` names the file and the chunk. ``strict``: raise DatasetError at the first
    damage instead. A file with no usable MCAP record raises DatasetError naming it.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read: {exc}") from exc
    scan = McapScan(path=path, size=len(raw))
    buf = memoryview(raw)
    start = 8
    if len(raw) < 8 or raw[:8] != MAGIC:
        if not require_complete and MAGIC.startswith(raw[:8]):
            scan.truncated_at = 0  # killed before the header reached the disk
            return scan
        nxt = None if strict else _resync(buf, 0)
        if nxt is None:
            raise DatasetError(f"{path}: not an MCAP file (bad magic {raw[:8]!r})")
        scan.damage.append(f"{path}: bad magic {raw[:8]!r}; skipped {nxt} bytes")
        start = nxt
    _Scanner(scan, buf, require_complete).run(start)
    if scan.damage and strict:
        raise DatasetError(f"corrupt MCAP file: {scan.damage[0]}")
    return scan
