"""Argument kinds of the method table and the checks behind them.

Each kind is a small object that either accepts a value (possibly returning
a normalised copy, e.g. a tuple turned into a list) or raises
:class:`Reject` with a reason. Reasons describe the rule that was broken,
never the value itself: a value may be a secret (``auth_token``,
``admin_password``) or a large payload, and reasons end up in logs and in
error messages sent back to the caller.
"""

import json
import math
import re

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")

MISSING = object()


class Reject(Exception):
    """A value broke its kind's rule; ``reason`` says which rule."""

    def __init__(self, reason, field_suffix=""):
        super().__init__(reason)
        self.reason = reason
        self.field_suffix = field_suffix


def _type_name(value):
    return type(value).__name__


class Kind:
    """Base of every argument kind."""

    def check(self, value):
        """Return the accepted value or raise :class:`Reject`."""
        raise NotImplementedError

    def describe(self):
        """Human-readable summary for docs and error messages."""
        raise NotImplementedError


class Str(Kind):
    """A text string with optional length bounds and pattern."""

    def __init__(self, min_len=0, max_len=65536, pattern=None):
        self.min_len = min_len
        self.max_len = max_len
        self.pattern = re.compile(pattern) if pattern else None

    def check(self, value):
        if not isinstance(value, str):
            raise Reject("must be a string, got %s" % _type_name(value))
        if not self.min_len <= len(value) <= self.max_len:
            raise Reject("length must be %d..%d characters, got %d"
                          % (self.min_len, self.max_len, len(value)))
        if "\x00" in value:
            raise Reject("must not contain NUL characters")
        if self.pattern is not None and not self.pattern.match(value):
            raise Reject("must match %s" % self.pattern.pattern)
        return value

    def describe(self):
        if self.pattern is not None:
            return "str %s" % self.pattern.pattern
        return "str (%d..%d chars)" % (self.min_len, self.max_len)


class Uuid(Kind):
    """A canonical lowercase uuid string (as XAPI and Nova print them)."""

    def check(self, value):
        if not isinstance(value, str):
            raise Reject("must be a uuid string, got %s" % _type_name(value))
        if not UUID_RE.match(value):
            raise Reject("must be a canonical lowercase uuid")
        return value

    def describe(self):
        return "uuid"


class Int(Kind):
    """An integer within ``[minimum, maximum]`` (booleans are refused)."""

    def __init__(self, minimum, maximum):
        self.minimum = minimum
        self.maximum = maximum

    def check(self, value):
        if isinstance(value, bool) or not isinstance(value, int):
            raise Reject("must be an integer, got %s" % _type_name(value))
        if not self.minimum <= value <= self.maximum:
            raise Reject("must be in %d..%d, got %d" % (self.minimum, self.maximum, value))
        return value

    def describe(self):
        return "int %d..%d" % (self.minimum, self.maximum)


class Enum(Kind):
    """One string out of a fixed set."""

    def __init__(self, *choices):
        self.choices = tuple(choices)

    def check(self, value):
        if not isinstance(value, str) or value not in self.choices:
            raise Reject("must be one of %s" % ", ".join(self.choices))
        return value

    def describe(self):
        return "one of %s" % ", ".join(self.choices)


class Bytes(Kind):
    """Raw bytes up to ``max_bytes`` (base64-tagged on JSON transports)."""

    def __init__(self, max_bytes):
        self.max_bytes = max_bytes

    def check(self, value):
        if isinstance(value, bytearray):
            value = bytes(value)
        if not isinstance(value, bytes):
            raise Reject("must be bytes, got %s" % _type_name(value))
        if len(value) > self.max_bytes:
            raise Reject("must be at most %d bytes, got %d" % (self.max_bytes, len(value)))
        return value

    def describe(self):
        return "bytes (<= %d)" % self.max_bytes


def _json_compatible(value, depth=0):
    if depth > 32:
        raise Reject("nests deeper than 32 levels")
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, int):
        if not -(1 << 63) <= value < 1 << 64:
            raise Reject("holds an integer outside 64 bits, which JSON readers cannot "
                          "all carry")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise Reject("holds NaN or an infinity, which JSON cannot carry")
        return value
    if isinstance(value, (list, tuple)):
        return [_json_compatible(item, depth + 1) for item in value]
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise Reject("has a key that is not a string (%s)" % _type_name(key))
            out[key] = _json_compatible(item, depth + 1)
        return out
    raise Reject("holds a %s, which JSON cannot carry" % _type_name(value))


class JsonDict(Kind):
    """A JSON-compatible dict whose JSON text is at most ``max_bytes``."""

    def __init__(self, max_bytes):
        self.max_bytes = max_bytes

    def check(self, value):
        if not isinstance(value, dict):
            raise Reject("must be a dict, got %s" % _type_name(value))
        value = _json_compatible(value)
        size = len(json.dumps(value, separators=(",", ":")).encode("utf-8"))
        if size > self.max_bytes:
            raise Reject("must be at most %d bytes as JSON, got %d" % (self.max_bytes, size))
        return value

    def describe(self):
        return "dict (<= %d bytes as JSON)" % self.max_bytes


class StrMap(Kind):
    """A dict of text keys to text values, as Nova's instance metadata
    (keys 1..``max_len`` characters, values 0..``max_len``)."""

    def __init__(self, max_items, max_len):
        self.max_items = max_items
        self.key = Str(min_len=1, max_len=max_len)
        self.value = Str(max_len=max_len)

    def check(self, value):
        if not isinstance(value, dict):
            raise Reject("must be a dict, got %s" % _type_name(value))
        if len(value) > self.max_items:
            raise Reject("must have at most %d keys, got %d" % (self.max_items, len(value)))
        out = {}
        for index, (key, item) in enumerate(sorted(value.items(), key=lambda kv: str(kv[0]))):
            try:
                key = self.key.check(key)
            except Reject as e:
                raise Reject("key %d %s" % (index, e.reason)) from None
            try:
                out[key] = self.value.check(item)
            except Reject as e:
                raise Reject(e.reason, "[%s]" % json.dumps(key)[:40]) from None
        return out

    def describe(self):
        return "dict of str (<= %d keys, <= %d chars each)" % (self.max_items,
                                                              self.key.max_len)


class List(Kind):
    """A list of ``min_items..max_items`` elements of one kind."""

    def __init__(self, item, min_items=0, max_items=64):
        self.item = item
        self.min_items = min_items
        self.max_items = max_items

    def check(self, value):
        if not isinstance(value, (list, tuple)):
            raise Reject("must be a list, got %s" % _type_name(value))
        if not self.min_items <= len(value) <= self.max_items:
            raise Reject("must have %d..%d items, got %d"
                          % (self.min_items, self.max_items, len(value)))
        out = []
        for index, item in enumerate(value):
            try:
                out.append(self.item.check(item))
            except Reject as e:
                raise Reject(e.reason, "[%d]%s" % (index, e.field_suffix)) from None
        return out

    def describe(self):
        return "list of %s (%d..%d)" % (self.item.describe(), self.min_items, self.max_items)


class Pair(Kind):
    """A two-element list ``[first, second]`` (e.g. ``[path, contents]``)."""

    def __init__(self, first, second):
        self.first = first
        self.second = second

    def check(self, value):
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            raise Reject("must be a [%s, %s] pair"
                          % (self.first.describe(), self.second.describe()))
        out = []
        for index, (kind, item) in enumerate(((self.first, value[0]), (self.second, value[1]))):
            try:
                out.append(kind.check(item))
            except Reject as e:
                raise Reject(e.reason, "[%d]%s" % (index, e.field_suffix)) from None
        return out

    def describe(self):
        return "[%s, %s]" % (self.first.describe(), self.second.describe())


class GuestPath(Str):
    """An absolute path naming a file inside a guest's filesystem: no empty,
    ``.`` or ``..`` component, no trailing ``/``."""

    def __init__(self, max_len=1024):
        super().__init__(min_len=2, max_len=max_len)

    def check(self, value):
        value = super().check(value)
        if not value.startswith("/"):
            raise Reject("must be an absolute path (start with /)")
        if any(part in ("", ".", "..") for part in value[1:].split("/")):
            raise Reject("must name a file: no empty, '.' or '..' component and no "
                          "trailing /")
        return value

    def describe(self):
        return "absolute file path (..%d chars)" % self.max_len


def paths_overlap(path, other):
    """Whether two guest paths are the same or one lies under the other
    (then they cannot both be files)."""
    return (path + "/").startswith(other + "/") or (other + "/").startswith(path + "/")


class GuestFiles(List):
    """Files to write into a guest: ``[path, contents]`` pairs with distinct
    paths, none of them under another (a path cannot be a file and a
    directory at once), so every file can be written or none; their
    contents at most ``max_total_bytes`` together."""

    def __init__(self, max_items, max_bytes, max_total_bytes):
        super().__init__(Pair(GuestPath(), Bytes(max_bytes=max_bytes)), max_items=max_items)
        self.max_total_bytes = max_total_bytes

    def check(self, value):
        files = super().check(value)
        total = sum(len(contents) for _, contents in files)
        if total > self.max_total_bytes:
            raise Reject("must hold at most %d bytes together, got %d"
                         % (self.max_total_bytes, total))
        index_of = {}
        for index, (path, _) in enumerate(files):
            if path in index_of:
                raise Reject("the same path as item %d" % index_of[path],
                              "[%d][0]" % index)
            index_of[path] = index
        for index, (path, _) in enumerate(files):
            parent = path.rsplit("/", 1)[0]
            while parent:
                if parent in index_of:
                    raise Reject("lies under item %d's path, which is a file"
                                  % index_of[parent], "[%d][0]" % index)
                parent = parent.rsplit("/", 1)[0]
        return files

    def describe(self):
        return "list of [absolute file path, bytes] with distinct paths (0..%d)" % \
            self.max_items


class Arg:
    """One declared argument.

    ``nullable`` arguments accept ``None`` and may be left out (they then
    arrive as ``None``); ``secret`` ones are never logged or echoed back.
    ``since`` is the interface version that added the argument (``None``:
    its method's own); only a nullable argument may be added later, so a
    call that leaves it out is served by an older server.
    """

    def __init__(self, name, kind, nullable=False, secret=False, since=None):
        if since is not None and not nullable:
            raise ValueError("%s: an argument added after its method must be nullable" % name)
        self.name = name
        self.kind = kind
        self.nullable = nullable
        self.secret = secret
        self.since = since

    def check(self, value=MISSING):
        """Return the accepted value (``None`` for an omitted nullable one)."""
        if value is MISSING:
            if self.nullable:
                return None
            raise Reject("is required")
        if value is None:
            if self.nullable:
                return None
            raise Reject("must not be None")
        return self.kind.check(value)

    def describe(self):
        text = self.kind.describe()
        return text + " or None" if self.nullable else text
