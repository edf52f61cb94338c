"""Fault injection: make chosen XAPI messages fail, for failure-path tests.

A fault is armed per message name (``VM.start``, ``VBD.plug``,
``host.call_plugin``, ..., and ``export_raw_vdi``, which cuts an export
after its answer, before its body): the next ``count`` calls after ``skip`` good ones
fail with the given XAPI error code (``INTERNAL_ERROR`` by default), as if
the real host had refused them. The code ``STOP_XAPI`` instead stops the
simulator as SIGTERM does, with that call in flight and never answered: a
toolstack restart (``xe-toolstack-restart``) at that very moment, once
whoever runs the simulator starts it again. Armed two ways:

* XML-RPC, on a live simulator: ``debug.inject_fault(session, message, code,
  count, skip)`` and ``debug.clear_faults(session)`` (with the XenAPI SDK:
  ``session.xenapi.debug.inject_fault("VM.start", "INTERNAL_ERROR", "1", "0")``);
* at startup, from ``NXS_SIM_FAULTS="VM.start=INTERNAL_ERROR:1:0,VBD.plug"``
  (``message[=code[:count[:skip]]]``).

The dispatcher calls :func:`check` with the message name before running it.
Nothing here exists on a real XAPI host; tests only.
"""

import os
import signal
import threading

from dom0.simulator import errors
from dom0.simulator.api.registry import message

STOP_XAPI = "STOP_XAPI"
_lock = threading.Lock()
_armed = {}  # message name → [skip, count, code]


def arm(name, code=errors.INTERNAL_ERROR, count=1, skip=0):
    """Make calls ``skip+1 .. skip+count`` of message ``name`` fail with ``code``."""
    count, skip = int(count), int(skip)
    if not name or count < 1 or skip < 0:
        raise errors.XapiError(errors.VALUE_NOT_SUPPORTED, "fault", "%s:%s:%s" % (
            name, count, skip))
    with _lock:
        _armed[name] = [skip, count, code or errors.INTERNAL_ERROR]


def clear():
    with _lock:
        _armed.clear()


def check(name):
    """Raise the armed error if this call of ``name`` is one that must fail."""
    if name.startswith("debug."):
        return
    with _lock:
        fault = _armed.get(name)
        if fault is None:
            return
        if fault[0] > 0:
            fault[0] -= 1
            return
        fault[1] -= 1
        if fault[1] <= 0:
            del _armed[name]
        code = fault[2]
    if code == STOP_XAPI:
        os.kill(os.getpid(), signal.SIGTERM)
        threading.Event().wait()  # the process ends with this call unanswered
    raise errors.XapiError(code, "injected fault in %s" % name)


def arm_from_text(text):
    """Arm faults from ``message[=code[:count[:skip]]]`` items, comma-separated."""
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        name, _, spec = item.partition("=")
        code, count, skip = (spec.split(":") + ["", "", ""])[:3]
        arm(name, code or errors.INTERNAL_ERROR, count or 1, skip or 0)


@message("debug.inject_fault")
def inject_fault(host, session, name, code, count, skip):
    arm(name, code, count, skip)
    return ""


@message("debug.clear_faults")
def clear_faults(host, session):
    clear()
    return ""


arm_from_text(os.environ.get("NXS_SIM_FAULTS"))
