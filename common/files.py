"""Files in and out: the one reader of input files and the one atomic writer, with one rule for modes.

Reading (:func:`read_text`, :func:`read_json`, :func:`input_lines`, :class:`CsvRecords`): every file
a user hands in (datasets, ``--pairs`` / ``--users`` lists, rosters, run summaries) is data, not
trust. It is decoded with a declared encoding (UTF-8 unless the format says otherwise), read with
bounded memory (a line over :func:`max_line_bytes`, a field over :func:`max_field_chars`, a whole
file over :data:`MAX_TEXT_BYTES` stop the read), and every problem is one
:class:`InputFileError` whose one-line message names the file, the line and, where there is one,
the field: never a ``UnicodeDecodeError`` or ``csv.Error`` traceback.

Writing, the rule: what a run writes for people and tools to read (datasets, rounds.jsonl,
summary.json, adapters, plots, checkpoints, TensorBoard logs) gets the mode any ``open()``
gives, ``0o666`` less the umask (0644 under the usual umask 022); secrets (private keys,
written by ``deploy.certs``) and a platform's private per-user/per-item parameters
(``clients.private_state``) stay 0600 and are never widened. ``tempfile.mkstemp`` creates
its file 0600, so an atomic writer must set the mode before the rename, or results end up
0600 next to 0644 files written by ``open()`` (as safetensors does).
"""

from __future__ import annotations

import csv
import json
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

SECRET_MODE = 0o600
FALLBACK_UMASK = 0o022


def umask() -> int:
    """The process umask, read without changing it (``os.umask`` can only be read by setting it,
    which races with other threads creating files); Linux's /proc, else the common default."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    return FALLBACK_UMASK


def result_mode() -> int:
    """Mode of a result file: ``0o666`` less the umask, as ``open()`` would create it."""
    return 0o666 & ~umask()


def result_dir_mode() -> int:
    """Mode of a result folder: ``0o777`` less the umask (``tempfile.mkdtemp`` makes it 0700)."""
    return 0o777 & ~umask()


def set_result_modes(folder: Path) -> None:
    """Give every file directly in ``folder`` :func:`result_mode` (for writers that create their
    files 0600 themselves, as ``safetensors.save_file`` does)."""
    mode = result_mode()
    for path in folder.iterdir():
        if path.is_file():
            path.chmod(mode)


def atomic_write_bytes(path: Path, data: bytes, *, mode: int | None = None, fsync: bool = False) -> None:
    """Write to a temp file in the same folder, set its mode, then ``os.replace``: readers never see
    half a file. ``mode`` defaults to :func:`result_mode` (a secret passes :data:`SECRET_MODE`: the temp
    file is 0600 from its creation, so a key is never briefly readable by others); ``fsync`` makes the
    bytes and then the rename itself durable (a power cut leaves the old file or the new one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.chmod(tmp, result_mode() if mode is None else mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if fsync:
        fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str, *, mode: int | None = None, fsync: bool = False) -> None:
    """:func:`atomic_write_bytes` of ``text`` as UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"), mode=mode, fsync=fsync)


def fsync_dir(folder: Path) -> None:
    """Make the renames and creations in ``folder`` durable (POSIX keeps them in the folder's own inode)."""
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


# --- reading ------------------------------------------------------------------------------

ENCODING = "utf-8"  # every crossfed input file, unless its format declares another (MovieLens: latin-1)
# Per field: a 5,000-character description loads; an unclosed quote that swallows the rest of a
# large file into one field, or a 1 GB blob, is reported where it starts without being read whole.
MAX_FIELD_CHARS = 1 << 20
MAX_FIELD_ENV = "CROSSFED_MAX_FIELD_CHARS"  # overrides MAX_FIELD_CHARS (a positive integer)
LINE_FIELDS = 4  # a physical line may hold this many maximal fields (4 UTF-8 bytes a character)
MAX_TEXT_BYTES = 64 << 20  # a file read whole (JSON, id lists): rosters and summaries are kilobytes


class InputFileError(Exception):
    """An input file is missing or malformed; the message is one line its owner can act on."""

    @classmethod
    def at(
        cls,
        file: Path | str,
        problem: str,
        *,
        line: int | None = None,
        field: str | None = None,
        expected: str | None = None,
        got: object = None,
    ) -> InputFileError:
        """``<file>:<line>: field `<field>`: <problem> (expected ..., got ...)``; a long ``got`` is cut."""
        where = f"{file}:{line}" if line is not None else str(file)
        what = f"field `{field}`: {problem}" if field is not None else problem
        shown = repr(got)
        shown = shown if len(shown) <= 80 else shown[:60] + f"... ({len(shown)} characters)"
        detail = f" (expected {expected}, got {shown})" if expected is not None else ""
        return cls(f"{where}: {what}{detail}".replace("\n", " ").replace("\r", " "))


def max_field_chars() -> int:
    """The longest field any reader accepts: :data:`MAX_FIELD_CHARS`, or ``$CROSSFED_MAX_FIELD_CHARS``."""
    raw = os.environ.get(MAX_FIELD_ENV)
    if raw is None:
        return MAX_FIELD_CHARS
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise InputFileError(f"${MAX_FIELD_ENV} must be a positive integer, got {raw!r}")
    return value


def max_line_bytes(field_chars: int | None = None) -> int:
    """The longest physical line read: :data:`LINE_FIELDS` maximal fields of 4-byte characters."""
    return LINE_FIELDS * 4 * (max_field_chars() if field_chars is None else field_chars)


def _open_binary(path: Path, error: type[InputFileError]) -> Any:
    if not path.exists():
        raise error.at(path, "file not found")
    if not path.is_file():
        raise error.at(path, "not a file", expected="a file", got="a folder" if path.is_dir() else "something else")
    try:
        return path.open("rb")
    except OSError as exc:
        raise error.at(path, f"cannot read: {exc.strerror}") from None


def read_text(
    path: Path | str, *, encoding: str = ENCODING, max_bytes: int = MAX_TEXT_BYTES,
    error: type[InputFileError] = InputFileError,
) -> str:  # fmt: skip
    """The whole file as text (a UTF-8 BOM dropped); ``error`` names the file and line otherwise."""
    path = Path(path)
    with _open_binary(path, error) as fh:
        raw = fh.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise error.at(path, "file too large", expected=f"at most {max_bytes} bytes", got=f"more than {max_bytes}")
    try:
        return raw.decode("utf-8-sig" if encoding == ENCODING else encoding)
    except UnicodeDecodeError as exc:
        line, name = raw[: exc.start].count(b"\n") + 1, encoding.upper()
        raise error.at(path, f"invalid {name}", line=line, expected=f"{name} text", got=raw[exc.start : exc.end]) \
            from None  # fmt: skip


def read_json(path: Path | str, *, error: type[InputFileError] = InputFileError) -> Any:
    """The file's JSON value (UTF-8, at most :data:`MAX_TEXT_BYTES`); ``error`` names file and line otherwise."""
    path = Path(path)
    text = read_text(path, error=error)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error.at(path, f"not JSON: {exc.msg}", line=exc.lineno) from None
    except RecursionError:  # [[[[... nested deeper than Python's stack
        raise error.at(path, "not JSON: nested too deeply") from None


class _BadLine(Exception):
    """A physical line that cannot be read: what is wrong, where, and the text read of it so far."""

    def __init__(self, problem: str, line: int, partial: str, expected: str, got: object) -> None:
        super().__init__(problem)
        self.problem, self.line, self.partial, self.expected, self.got = problem, line, partial, expected, got


def _lines(path: Path, encoding: str, line_bytes: int, error: type[InputFileError]) -> Iterator[str]:
    """Decoded physical lines with their endings, at most ``line_bytes`` each; problems as :class:`_BadLine`."""
    with _open_binary(path, error) as fh:
        number = 0
        while raw := fh.readline(line_bytes + 1):
            number += 1
            if number == 1 and encoding == ENCODING:
                raw = raw.removeprefix(b"\xef\xbb\xbf")  # the BOM spreadsheet exports add
            if len(raw) > line_bytes:
                partial = raw[:line_bytes].decode(encoding, errors="replace")
                raise _BadLine("line too long", number, partial, f"at most {line_bytes} bytes a line",
                               f"more than {line_bytes} bytes")  # fmt: skip
            try:
                yield raw.decode(encoding)
            except UnicodeDecodeError as exc:
                partial, name = raw[: exc.start].decode(encoding, errors="replace"), encoding.upper()
                raise _BadLine(f"invalid {name}", number, partial, f"{name} text", raw[exc.start : exc.end]) from None


def input_lines(
    path: Path | str, *, encoding: str = ENCODING, error: type[InputFileError] = InputFileError,
    field: str | None = None,
) -> Iterator[tuple[int, str]]:  # fmt: skip
    """``(line number, line without its ending)`` of a text file, read with bounded memory. ``field``: the
    name of a file's one column (an id list): errors name it, and a line too long is a field too long."""
    path = Path(path)
    try:
        for number, line in enumerate(_lines(path, encoding, max_line_bytes(), error), start=1):
            yield number, line.rstrip("\r\n")
    except _BadLine as bad:
        problem = "field too long" if field and bad.problem == "line too long" else bad.problem
        raise error.at(path, problem, line=bad.line, field=field, expected=bad.expected, got=bad.got) from None


class CsvRecords:
    """A CSV file (or text) read record by record: its header, then ``(line, {column: value})``.

    Checked on the way, each an ``error`` naming file, line and field: the encoding, an empty
    file, the ``required`` columns, each record's field count (a short or a long row), each
    field's length (:func:`max_field_chars`, enforced by ``csv`` itself so a huge field is never
    held whole) and ``csv``'s own complaints. ``line`` is the line where the record ends, except
    for a field too long, reported where its record starts (an unclosed quote swallows the rest).
    """

    def __init__(
        self,
        source: Path | str | Iterable[str],
        required: Sequence[str] = (),
        *,
        path: Path | str | None = None,
        delimiter: str = ",",
        encoding: str = ENCODING,
        error: type[InputFileError] = InputFileError,
    ) -> None:
        self.path = Path(source) if isinstance(source, (str, Path)) else Path(path or "<text>")
        self.error = error
        self.limit = max_field_chars()
        self.delimiter = delimiter
        lines = _lines(self.path, encoding, max_line_bytes(self.limit), error) if isinstance(source, (str, Path)) \
            else iter(source)  # fmt: skip
        self._record: list[str] = []  # the text of the record being read, to name a field in an error
        self._reader = csv.reader(self._feed(lines), delimiter=delimiter)
        raw = self._next([])
        if raw is None:
            raise error.at(self.path, "empty file", line=1, expected=f"a header line with {list(required)}", got="")
        self.header = [name.strip() for name in raw]
        repeated = sorted({name for name in self.header if self.header.count(name) > 1})
        if repeated:
            raise error.at(self.path, "repeated column", line=1, field=repeated[0], expected="each column once",
                           got=",".join(self.header))  # fmt: skip
        for name in required:
            if name not in self.header:
                raise error.at(self.path, "missing column", line=1, field=name,
                               expected=f"header with {list(required)}", got=",".join(self.header))  # fmt: skip

    def _feed(self, lines: Iterator[str]) -> Iterator[str]:
        for line in lines:
            self._record.append(line)
            yield line

    def _field_at_end(self, text: str, names: Sequence[str]) -> str:
        """The name of the field ``text`` (a record's start) ends in, read leniently (for error messages).
        Each run of plain characters is shrunk to one first: the count of fields is all that matters, and
        ``csv`` would hold a huge field as 4 bytes a character. A quote left open is closed."""
        plain = re.sub(rf'[^{re.escape(self.delimiter)}"]+', "x", text)
        row: list[str] = []
        for candidate in (plain, plain + '"'):
            try:
                row = next(csv.reader([candidate], delimiter=self.delimiter), [])
                break
            except csv.Error:
                continue
        index = max(len(row), 1) - 1
        return names[index] if index < len(names) else f"#{index + 1}"

    def _next(self, names: Sequence[str]) -> list[str] | None:
        """The next record's fields; None at the end of the file."""
        start = self._reader.line_num + 1
        self._record.clear()
        old = csv.field_size_limit(self.limit)  # process-wide: set for this read only
        try:
            return next(self._reader, None)
        except _BadLine as bad:
            field = self._field_at_end("".join(self._record) + bad.partial, names)
            last = len(bad.partial) - bad.partial.rfind(self.delimiter) - 1  # the field cut off (roughly)
            long_field = bad.problem == "line too long" and last > self.limit
            problem = "field too long" if long_field else bad.problem
            expected, got = (f"at most {self.limit} characters", f"more than {self.limit} characters") \
                if long_field else (bad.expected, bad.got)  # fmt: skip
            raise self.error.at(self.path, problem, line=start if long_field else bad.line, field=field,
                                expected=expected, got=got) from None  # fmt: skip
        except csv.Error as exc:
            field = self._field_at_end("".join(self._record), names)
            if "field larger than field limit" in str(exc):
                hint = " (an unclosed quote?)" if len(self._record) > 1 else ""  # the record spans lines
                raise self.error.at(self.path, f"field too long{hint}", line=start, field=field,
                                    expected=f"at most {self.limit} characters",
                                    got=f"more than {self.limit} characters") from None  # fmt: skip
            raise self.error.at(self.path, f"not CSV: {exc}", line=self._reader.line_num, field=field) from None
        finally:
            csv.field_size_limit(old)

    def __iter__(self) -> Iterator[tuple[int, dict[str, str]]]:
        while (row := self._next(self.header)) is not None:
            if not row:  # a blank line
                continue
            line = self._reader.line_num
            if len(row) != len(self.header):
                short = len(row) < len(self.header)
                field = self.header[len(row)] if short else f"#{len(self.header) + 1}"
                raise self.error.at(self.path, "missing field: wrong number of fields" if short else
                                    "extra field: wrong number of fields", line=line, field=field,
                                    expected=f"{len(self.header)} fields", got=len(row))  # fmt: skip
            yield line, dict(zip(self.header, row, strict=True))
