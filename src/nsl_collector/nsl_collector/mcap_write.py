"""rosbags' MCAP storage writer with CRCs: every chunk, the data section and the summary.

rosbags 0.11 writes every CRC field as 0 ("not computed"), so a bag whose image or action bytes
were overwritten reads back without complaint. :class:`CrcMcapWriter` is the same writer (same
records, same order, same crash behaviour: nothing is rewritten in place) with

* the chunk CRC: crc32 of the uncompressed chunk records, which the scanner, rosbags' reader
  and the mcap library check;
* the DataEnd CRC: crc32 of every byte of the file before the DataEnd record, kept as a
  running CRC of everything written, so closing costs no re-read;
* the footer's summary CRC: crc32 of the summary section and the footer's first two fields.

``Writer.STORAGE_PLUGINS`` is set on the rosbags ``Writer`` instance (:func:`use_crc_writer`),
so metadata.yaml and everything else stay rosbags' own.
"""

from __future__ import annotations

import zlib
from collections import defaultdict
from io import BytesIO
from pathlib import Path
from typing import Any

from rosbags.rosbag2 import StoragePlugin
from rosbags.rosbag2.storage_mcap import (
    McapWriter,
    PendingChunk,
    write_channel,
    write_record,
    write_schema,
    write_string,
    write_uint16,
    write_uint32,
    write_uint64,
)

MAGIC = b"\x89MCAP0\r\n"


class CrcFile:
    """A binary file that keeps the crc32 of every byte written through it."""

    def __init__(self, raw: Any, crc: int = 0) -> None:
        self._raw = raw
        self.crc = crc

    def write(self, data: bytes | memoryview) -> int:
        """Write ``data`` and extend the running CRC."""
        self.crc = zlib.crc32(data, self.crc)
        return self._raw.write(data)

    def tell(self) -> int:
        """Offset of the next byte written."""
        return self._raw.tell()

    def flush(self) -> None:
        """Flush the underlying file's buffer to the OS."""
        self._raw.flush()

    def fileno(self) -> int:
        """Descriptor of the underlying file (for fsync)."""
        return self._raw.fileno()

    def close(self) -> None:
        """Close the underlying file."""
        self._raw.close()


class CrcMcapWriter(McapWriter):
    """rosbags' MCAP writer, writing chunk, data-end and summary CRCs (see the module doc)."""

    def __init__(self, path: Path, compression: Any) -> None:
        super().__init__(path, compression)
        self._summary_offset_start = 0
        self.bio.flush()
        # The magic and header record were written before the CRC could be tracked.
        self.bio = CrcFile(self.bio, zlib.crc32(self.path.read_bytes()))

    def close_chunk(self) -> None:
        """Write the pending chunk (with its CRC) and its message indexes."""
        uncompressed = self.chunk.bio.getvalue()
        if not self.chunk.msgs:  # definitions only: a valid, empty time range
            self.chunk.message_start_time = self.chunk.message_end_time = 0
        rec = BytesIO()
        write_uint64(rec, self.chunk.message_start_time)
        write_uint64(rec, self.chunk.message_end_time)
        write_uint64(rec, len(uncompressed))
        write_uint32(rec, zlib.crc32(uncompressed))
        compressed = self.compressor(uncompressed)
        write_string(rec, self.compression)
        write_uint64(rec, len(compressed))
        rec.write(compressed)
        chunk_start = self.bio.tell()
        write_record(self.bio, 0x06, rec)
        chunk_end = self.bio.tell()
        offsets: list[tuple[int, int]] = []
        for cid, msgs in self.chunk.msgs.items():
            offsets.append((cid, self.bio.tell()))
            rec = BytesIO()
            write_uint16(rec, cid)
            write_uint32(rec, len(msgs) * 16)
            for ts, offset in msgs:
                write_uint64(rec, ts)
                write_uint64(rec, offset)
            write_record(self.bio, 0x07, rec)
        rec = BytesIO()
        write_uint64(rec, self.chunk.message_start_time)
        write_uint64(rec, self.chunk.message_end_time)
        write_uint64(rec, chunk_start)
        write_uint64(rec, chunk_end - chunk_start)
        write_uint32(rec, len(offsets) * 10)
        for cid, offset in offsets:
            write_uint16(rec, cid)
            write_uint64(rec, offset)
        write_uint64(rec, self.bio.tell() - chunk_end)
        write_string(rec, self.compression)
        write_uint64(rec, len(compressed))
        write_uint64(rec, len(uncompressed))
        self.chunks.append(rec)
        self.chunk = PendingChunk(2**63 - 1, 0, BytesIO(), defaultdict(list))

    def close(self, version: int, metadata: str) -> None:
        """Write the last chunk, metadata, DataEnd (CRC), summary, footer (CRC) and magic."""
        _ = version
        if self.chunk.bio.tell():
            self.close_chunk()
        metadata_start = self.bio.tell()
        rec = BytesIO()
        write_string(rec, "rosbag2")
        sub = BytesIO()
        write_string(sub, "serialized_metadata")
        write_string(sub, metadata)
        write_uint32(rec, sub.tell())
        rec.write(sub.getbuffer())
        write_record(self.bio, 0x0C, rec)
        metadata_end = self.bio.tell()
        rec = BytesIO()
        write_uint32(rec, self.bio.crc)
        write_record(self.bio, 0x0F, rec)
        summary_start = self.bio.tell()
        summary = BytesIO()
        self._write_summary(summary, summary_start, metadata_start, metadata_end)
        footer = BytesIO()
        footer.write(b"\x02")
        write_uint64(footer, 20)
        write_uint64(footer, summary_start)
        write_uint64(footer, self._summary_offset_start)
        crc = zlib.crc32(footer.getbuffer(), zlib.crc32(summary.getbuffer()))
        write_uint32(footer, crc)
        self.bio.write(summary.getbuffer())
        self.bio.write(footer.getbuffer())
        self.bio.write(MAGIC)
        self.bio.close()

    def _write_summary(
        self, out: BytesIO, base: int, metadata_start: int, metadata_end: int
    ) -> None:
        """Summary records as rosbags writes them, into ``out`` (file offset ``base``)."""
        schema_start = base + out.tell()
        for schema in self.schemas:
            write_schema(out, schema)
        channel_start = base + out.tell()
        for channel in self.channels:
            write_channel(out, channel, self.schemas)
        chunk_start = base + out.tell()
        for chunk in self.chunks:
            write_record(out, 0x08, chunk)
        metadata_index_start = base + out.tell()
        rec = BytesIO()
        write_uint64(rec, metadata_start)
        write_uint64(rec, metadata_end - metadata_start)
        write_string(rec, "rosbag2")
        write_record(out, 0x0D, rec)
        statistics_start = base + out.tell()
        rec = BytesIO()
        write_uint64(rec, sum(self.channel_stats.values()))
        write_uint16(rec, len(self.schemas))
        write_uint32(rec, len(self.channels))
        write_uint32(rec, 0)  # attachments
        write_uint32(rec, 1)  # metadata
        write_uint32(rec, len(self.chunks))
        write_uint64(rec, self.message_start_time)
        write_uint64(rec, self.message_end_time)
        write_uint32(rec, len(self.channel_stats) * 10)
        for cid, count in sorted(self.channel_stats.items()):
            write_uint16(rec, cid)
            write_uint64(rec, count)
        write_record(out, 0x0B, rec)
        self._summary_offset_start = base + out.tell()
        groups = (
            (0x03, schema_start, channel_start),
            (0x04, channel_start, chunk_start),
            (0x08, chunk_start, metadata_index_start),
            (0x0D, metadata_index_start, statistics_start),
            (0x0B, statistics_start, self._summary_offset_start),
        )
        for opcode, start, end in groups:
            if start != end:
                rec = BytesIO()
                rec.write(bytes([opcode]))
                write_uint64(rec, start)
                write_uint64(rec, end - start)
                write_record(out, 0x0E, rec)


def use_crc_writer(writer: Any) -> None:
    """Make a rosbags ``Writer`` (before ``open()``) write MCAP storage with CRCs."""
    writer.STORAGE_PLUGINS = {**type(writer).STORAGE_PLUGINS, StoragePlugin.MCAP: CrcMcapWriter}
