"""gzip, applied as the CSV writer produces bytes (nothing is compressed after the fact)."""

import zlib
from typing import BinaryIO


class GzipSink:
    """A file-like sink that gzips everything written into it before it reaches ``raw``.

    zlib releases the GIL while it compresses, so shards compress in parallel threads. The
    gzip header carries no timestamp: the same rows always give the same bytes (and crc32c).
    """

    def __init__(self, raw: BinaryIO, level: int) -> None:
        self._raw = raw
        self._deflate = zlib.compressobj(level, zlib.DEFLATED, 31)  # 31: gzip container
        self.closed = False

    def write(self, data: bytes) -> int:
        self._raw.write(self._deflate.compress(data))
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        """Write the gzip trailer (once); ``raw`` stays open, its owner closes it."""
        if not self.closed:
            self._raw.write(self._deflate.flush())
            self.closed = True
