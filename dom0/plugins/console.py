#!/usr/bin/env python3
"""XAPI plugin: the tail of a guest's console log.

XenServer's xenconsoled logs each guest domain's console to
``/var/log/xen/guest/console.<domid>`` in dom0. ``get_console_log`` returns
its last ``max_bytes`` (at most 1 MiB) base64-encoded, with whether older
output was left out; a domain without a log is ``NoConsoleLog``.

Python 3.6 compatible; standard library and XenAPIPlugin only.
"""

import base64
import os

import XenAPIPlugin

from nxs_pluginlib import DeviceError, finally_on_sigterm, int_arg, to_json

MAX_BYTES = 1 << 20
# dom0 is domain 0; a guest's domid is positive and below Xen's DOMID_FIRST_RESERVED.
MAX_DOMID = 0x7FEF


class NoConsoleLog(Exception):
    """The domain has no console log (never started, or logging is off)."""


def _log_dir():
    return os.environ.get("NXS_DOM0_CONSOLE_DIR") or "/var/log/xen/guest"


def get_console_log(session, args):
    """The last ``max_bytes`` of domain ``dom_id``'s console log."""
    dom_id = int_arg(args, "dom_id", 1, MAX_DOMID)
    max_bytes = int_arg(args, "max_bytes", 1, MAX_BYTES, required=False, default=MAX_BYTES)
    path = os.path.join(_log_dir(), "console.%d" % dom_id)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise NoConsoleLog("domain %d has no console log in %s" % (dom_id, _log_dir())) from None
    except OSError as e:
        raise DeviceError("cannot open %s: %s" % (path, e)) from None
    try:
        size = os.fstat(fd).st_size
        start = max(size - max_bytes, 0)
        os.lseek(fd, start, os.SEEK_SET)
        data = b""
        while len(data) < size - start:
            chunk = os.read(fd, size - start - len(data))
            if not chunk:
                break
            data += chunk
    except OSError as e:
        raise DeviceError("cannot read %s: %s" % (path, e)) from None
    finally:
        os.close(fd)
    return to_json({"log": base64.b64encode(data).decode("ascii"), "truncated": start > 0,
                    "size": size})


if __name__ == "__main__":
    finally_on_sigterm()
    XenAPIPlugin.dispatch({
        "get_console_log": get_console_log,
    })
