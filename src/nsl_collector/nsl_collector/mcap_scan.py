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


class _Corrupt(Exception):
    def __init__(self, msg: str, zero_opcode_at: int | None = None) -> None:
        super().__init__(msg)
        self.zero_opcode_at = zero_opcode_at


def _string(buf, pos: int) -> tuple[str, int]:
    (n,) = _U32.unpack_from(buf, pos)
    pos += 4
    if pos + n > len(buf):
        raise _Corrupt("string runs past its record")
    return bytes(buf[pos : pos + n]).decode("utf-8"), pos + n


def _decompress(compression: str, data: memoryview, size: int) -> bytes | memoryview:
    if compression == "":
        return data
    if compression == "zstd":
        try:
            from compression import zstd  # Python >= 3.14
        except ImportError:
            try:
                from backports import zstd
            except ImportError:
                zstd = None
        if zstd is not None:
            return zstd.decompress(bytes(data))
        import zstandard

        return zstandard.ZstdDecompressor().decompress(bytes(data), max_output_size=size)
    if compression == "lz4":
        import lz4.frame

        return lz4.frame.decompress(bytes(data))
    raise _Corrupt(f"unsupported chunk compression {compression!r}")


def _records(scan: McapScan, buf: memoryview, pos: int, end: int, *, top: bool) -> int:
    """Parse records in buf[pos:end]; returns the offset where parsing stopped (a footer's end,
    or ``end``). Raises _Corrupt for malformed records and _Truncated for an incomplete tail.
    """
    while pos < end:
        if pos + 9 > end:
            raise _Truncated(pos)
        op, length = _REC.unpack_from(buf, pos)
        body = pos + 9
        if length > end - body:
            raise _Truncated(pos)
        rec_end = body + length
        if op == 0x00:
            raise _Corrupt(
                f"invalid record opcode 0 at offset {pos}", zero_opcode_at=pos if top else None
            )
        if op == _OP_MESSAGE:
            if length < 22:
                raise _Corrupt(f"message record at offset {pos} is too short ({length} bytes)")
            cid, _seq, log_time, _pub = _MSG.unpack_from(buf, body)
            scan.messages.append((cid, log_time, buf[body + 22 : rec_end]))
        elif op == _OP_SCHEMA:
            (sid,) = _U16.unpack_from(buf, body)
            name, p = _string(buf, body + 2)
            encoding, p = _string(buf, p)
            (n,) = _U32.unpack_from(buf, p)
            if p + 4 + n > rec_end:
                raise _Corrupt(f"schema record at offset {pos} runs past its end")
            if sid:
                scan.schemas[sid] = Schema(sid, name, encoding, bytes(buf[p + 4 : p + 4 + n]))
        elif op == _OP_CHANNEL:
            cid, sid = struct.unpack_from("<HH", buf, body)
            topic, p = _string(buf, body + 4)
            enc, p = _string(buf, p)
            scan.channels[cid] = Channel(cid, sid, topic, enc)
        elif op == _OP_CHUNK:
            if not top:
                raise _Corrupt(f"nested chunk at offset {pos}")
            _start, _end, usize, crc = _CHUNK.unpack_from(buf, body)
            compression, p = _string(buf, body + 28)
            (csize,) = _U64.unpack_from(buf, p)
            p += 8
            if p + csize > rec_end:
                raise _Corrupt(f"chunk at offset {pos} runs past its record")
            data = _decompress(compression, buf[p : p + csize], usize)
            if len(data) != usize:
                raise _Corrupt(f"chunk at offset {pos}: {len(data)} bytes, header says {usize}")
            if crc and zlib.crc32(data) != crc:
                raise _Corrupt(f"chunk at offset {pos}: CRC mismatch")
            inner = memoryview(data)
            try:
                _records(scan, inner, 0, len(inner), top=False)
            except _Truncated as exc:
                raise _Corrupt(
                    f"chunk at offset {pos}: inner record at {exc.offset} runs past the chunk"
                ) from None
        elif op == _OP_FOOTER and top:
            if bytes(buf[rec_end : rec_end + 8]) != MAGIC or rec_end + 8 != len(buf):
                raise _Corrupt(
                    f"footer at offset {pos} is not followed by the closing magic at the end of the file"
                )
            scan.complete = True
            return rec_end + 8
        # Header, DataEnd, indexes, statistics, metadata, attachments, unknown: skipped.
        pos = rec_end
    return pos


class _Truncated(Exception):
    def __init__(self, offset: int) -> None:
        super().__init__(offset)
        self.offset = offset


def scan_mcap(path: str | Path, *, require_complete: bool) -> McapScan:
    """Scan an MCAP file.

    ``require_complete``: the file belongs to a bag that was closed (it has metadata.yaml), so a
    missing footer is an error. Otherwise (a recording that was killed) the file may end at any
    byte; everything before the last complete record is returned and ``truncated_at`` says where
    the tail starts. Raises DatasetError naming the file for anything malformed.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read: {exc}") from exc
    scan = McapScan(path=path, size=len(raw))
    buf = memoryview(raw)
    if len(raw) < 8 or raw[:8] != MAGIC:
        if not require_complete and MAGIC.startswith(raw[:8]):
            scan.truncated_at = 0  # killed before the header reached the disk
            return scan
        raise DatasetError(f"{path}: not an MCAP file (bad magic {raw[:8]!r})")
    try:
        end = _records(scan, buf, 8, len(raw), top=True)
    except _Truncated as exc:
        if require_complete:
            raise DatasetError(
                f"{path}: truncated MCAP file: the record at offset {exc.offset} runs past the end "
                f"of the file ({len(raw)} bytes) and the bag was closed, so this is damage"
            ) from None
        scan.truncated_at = exc.offset
        return scan
    except _Corrupt as exc:
        # A zero-filled tail (file system crash after a kill) counts as truncation in an
        # unclosed file; anything else malformed is corruption.
        off = exc.zero_opcode_at
        if not require_complete and off is not None and not raw[off:].strip(b"\0"):
            scan.truncated_at = off
            return scan
        raise DatasetError(f"{path}: corrupt MCAP file: {exc}") from None
    except (struct.error, UnicodeDecodeError, ValueError, OSError) as exc:
        raise DatasetError(f"{path}: corrupt MCAP file: {exc}") from None
    if not scan.complete:
        if require_complete:
            raise DatasetError(
                f"{path}: truncated MCAP file: no footer (the bag's metadata.yaml says it was closed)"
            )
        scan.truncated_at = end
    return scan
