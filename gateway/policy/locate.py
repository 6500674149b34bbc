"""Map a config path such as ("rules", 3, "dst_ports") back to a line of the TOML source.

tomllib keeps no positions, so this scans the text: table headers (counting `[[rules]]`
occurrences to get element indexes) and `key =` lines. It tracks strings, comments and
brackets so that lines inside multi-line arrays or strings are never mistaken for keys or
headers. A path that is not found falls back to its longest known prefix (usually the table
header), which is where the user has to look anyway.
"""

from __future__ import annotations

import json
import re

PathElem = str | int
Path = tuple[PathElem, ...]

_KEY_PART = r'(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|\'[^\']*\')'
_DOTTED = rf"{_KEY_PART}(?:\s*\.\s*{_KEY_PART})*"
_KEY_PART_RE = re.compile(_KEY_PART)
_ARRAY_HEADER_RE = re.compile(rf"^\s*\[\[\s*({_DOTTED})\s*\]\]\s*(?:#.*)?$")
_TABLE_HEADER_RE = re.compile(rf"^\s*\[\s*({_DOTTED})\s*\]\s*(?:#.*)?$")
_KEY_RE = re.compile(rf"^\s*({_DOTTED})\s*=")


def _split_key(dotted: str) -> list[str]:
    parts: list[str] = []
    for m in _KEY_PART_RE.finditer(dotted):
        tok = m.group(0)
        if tok.startswith('"'):
            try:
                tok = json.loads(tok)
            except ValueError:  # TOML escapes JSON lacks (\e, \U...): the raw text is close enough
                tok = tok[1:-1]
        elif tok.startswith("'"):
            tok = tok[1:-1]
        parts.append(tok)
    return parts


class _Lexer:
    """Tracks whether the scanner is inside a multi-line string or an open bracket."""

    def __init__(self) -> None:
        self.ml_delim: str | None = None  # '"""' or "'''" while inside a multi-line string
        self.depth = 0  # open [ and { of values

    def at_top(self) -> bool:
        return self.ml_delim is None and self.depth == 0

    def feed(self, line: str, start: int = 0) -> None:
        i, n = start, len(line)
        while i < n:
            if self.ml_delim is not None:
                end = line.find(self.ml_delim, i)
                if end < 0:
                    return
                i = end + 3
                self.ml_delim = None
                continue
            c = line[i]
            if c == "#":
                return
            if line.startswith('"""', i) or line.startswith("'''", i):
                self.ml_delim = line[i : i + 3]
                i += 3
                continue
            if c == '"':
                i += 1
                while i < n and line[i] != '"':
                    i += 2 if line[i] == "\\" else 1
                i += 1
                continue
            if c == "'":
                end = line.find("'", i + 1)
                i = n if end < 0 else end + 1
                continue
            if c in "[{":
                self.depth += 1
            elif c in "]}":
                self.depth = max(0, self.depth - 1)
            i += 1


def scan_locations(text: str) -> dict[Path, int]:
    """Every table header and key in `text` -> its 1-based line (first occurrence wins)."""
    where: dict[Path, int] = {}
    arrays: dict[Path, int] = {}  # array-of-tables path -> elements seen so far
    current: Path = ()
    lex = _Lexer()

    def resolve(keys: list[str]) -> Path:
        # a key path through arrays of tables refers to their last element (TOML semantics)
        path: Path = ()
        for k in keys:
            path = (*path, k)
            if path in arrays:
                path = (*path, arrays[path] - 1)
        return path

    def note(path: Path, lineno: int) -> None:
        for n in range(1, len(path) + 1):
            where.setdefault(path[:n], lineno)

    for lineno, line in enumerate(text.splitlines(), start=1):
        if not lex.at_top():
            lex.feed(line)
            continue
        if m := _ARRAY_HEADER_RE.match(line):
            keys = _split_key(m.group(1))
            arr = (*resolve(keys[:-1]), keys[-1])
            idx = arrays.get(arr, 0)
            arrays[arr] = idx + 1
            current = (*arr, idx)
            note(current, lineno)
            continue
        if m := _TABLE_HEADER_RE.match(line):
            current = resolve(_split_key(m.group(1)))
            note(current, lineno)
            continue
        if m := _KEY_RE.match(line):
            note((*current, *_split_key(m.group(1))), lineno)
            lex.feed(line, m.end())
            continue
        lex.feed(line)
    return where


class Locator:
    def __init__(self, text: str) -> None:
        self._where = scan_locations(text)

    def line(self, path: Path) -> int:
        """Line of `path`, else of its longest known prefix, else 1."""
        for n in range(len(path), 0, -1):
            found = self._where.get(path[:n])
            if found is not None:
                return found
        return 1

    def has(self, path: Path) -> bool:
        return path in self._where
