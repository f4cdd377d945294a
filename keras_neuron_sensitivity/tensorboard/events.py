"""Event files, written and read by hand: the TFRecord framing of TensorBoard.

Hand-made for one reason, full-disk safety (`EventFile`): TensorBoard's own
writer cannot promise that what was written before a failed write stays
readable. Reading is hand-made too, because TensorBoard's own loader
imports TensorFlow, which a JAX or PyTorch user's process must not.
"""

import itertools
import os
import socket
import struct
import time

import google_crc32c
from tensorboard.compat.proto import event_pb2

_FILE_NUMBERS = itertools.count()


class EventFile:
    """One event file, written synchronously with plain file I/O.

    TensorBoard's own `EventFileWriter` writes from a thread of its own: on a
    full disk it prints a traceback from that thread and raises
    `ResourceExhaustedError` from `flush`/`close` (docs/how-it-computes.md, "Traps of the stack"). Here every
    event is one unbuffered `write`: when `append` returns, the event is
    with the operating system (any reader sees it); when it raises
    `OSError`, the file is cut back to its last whole event first, so what
    was written before stays readable (a partial record would make readers
    stop there) and a later `append` can succeed.

    Args:
        run_dir: the run's directory, created if missing.
    """

    def __init__(self, run_dir):
        os.makedirs(run_dir, exist_ok=True)
        name = (
            f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}"
            f".{os.getpid()}.{next(_FILE_NUMBERS):06d}"
        )
        self.path = os.path.join(run_dir, name)
        self._file = open(self.path, "ab", buffering=0)
        self._size = 0  # bytes of whole events in the file
        self.tags = set()  # tags written, with their metadata, to this file
        self.broken = False  # could not be cut back: start a new file

    def removed(self):
        """Whether the file was deleted (for example with its directory)."""
        try:
            return os.fstat(self._file.fileno()).st_nlink == 0
        except OSError:
            return True

    def append(self, *events):
        """Writes `events` (serialized) in one write: all of them, or none."""
        data = b"".join(_record(event) for event in events)
        if self._size == 0:  # every event file starts with its version
            version = event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2")
            data = _record(version.SerializeToString()) + data
        try:
            view = memoryview(data)
            while view:
                view = view[self._file.write(view):]
        except OSError:
            try:
                os.ftruncate(self._file.fileno(), self._size)
            except OSError:
                self.broken = True
            raise
        self._size += len(data)

    def close(self):
        try:
            self._file.close()
        except OSError:
            pass  # unbuffered: nothing was left to write


def masked_crc32c(data):
    """TFRecord's masked CRC-32C of `data` (in C: TensorBoard's fallback
    without TensorFlow computes it in Python, about 5 MB/s)."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _record(data):
    """TFRecord framing: length, its masked CRC-32C, data, its masked CRC-32C."""
    header = struct.pack("<Q", len(data))
    return b"".join([
        header,
        struct.pack("<I", masked_crc32c(header)),
        data,
        struct.pack("<I", masked_crc32c(data)),
    ])


def read_events(path):
    """The events of one file, read by the TFRecord framing `_record` writes.

    A record cut short, or whose checksum fails (a file cut by a kill or a
    full disk), ends the file, as TensorBoard's loader stops there.
    """
    with open(path, "rb") as file:
        data = file.read()
    at = 0
    while at + 12 <= len(data):
        header = data[at : at + 8]
        (length,) = struct.unpack("<Q", header)
        (header_crc,) = struct.unpack("<I", data[at + 8 : at + 12])
        end = at + 12 + length + 4
        if header_crc != masked_crc32c(header) or end > len(data):
            return
        body = data[at + 12 : at + 12 + length]
        (body_crc,) = struct.unpack("<I", data[end - 4 : end])
        if body_crc != masked_crc32c(body):
            return
        yield event_pb2.Event.FromString(body)
        at = end
