"""From an XML-RPC method name and parameters to a XAPI response.

``Async.<Class>.<verb>`` runs the message in a thread under a new task and
returns the task at once. As XAPI does, the task's ``result`` on success is
the return value as XML-RPC ``<value>`` text (``<value>OpaqueRef:…</value>``
for a ref, ``<value></value>`` for a message that returns nothing); a
failure puts the error description in ``error_info``.
"""

import datetime
import logging
import threading
import xmlrpc.client

from dom0.simulator import errors
from dom0.simulator import faults
from dom0.simulator import model
from dom0.simulator.api import generic
from dom0.simulator.api.registry import MESSAGES, Message

LOG = logging.getLogger(__name__)


def _lookup(name):
    message = MESSAGES.get(name)
    if message is not None:
        return message
    cls, _, verb = name.partition(".")
    fn = generic.accessor(cls, verb)
    if fn is None:
        return None
    # Only setters and map edits change the database.
    return Message(name, fn, locked=True, async_ok=False, needs_session=True)


def _check_count(message, params):
    """XAPI's count check (gen_server.ml, ``operation``).

    The session is not counted, neither in what is expected nor in what was
    given (``List.length __params - 1``, so a session message given nothing
    reports -1). A message without default parameters takes exactly its
    count; one with defaults takes at least the parameters without, and
    ignores any beyond its own (``default_args``).
    """
    given = len(params) - (1 if message.needs_session else 0)
    if given == message.required or (message.optional and given > message.required):
        return
    raise errors.XapiError(errors.MESSAGE_PARAMETER_COUNT_MISMATCH, message.name,
                           message.required, given)


def check_session(host, session_ref):
    if not host.sessions.valid(session_ref):
        raise errors.XapiError(errors.SESSION_INVALID, session_ref)
    return session_ref


def _run(host, message, params):
    if not message.locked:
        return message.fn(host, *params)
    with host.store.lock:
        try:
            return message.fn(host, *params)
        finally:
            host.store.commit()


def call(host, name, params):
    """Run XAPI message ``name``; returns its value or raises XapiError.

    The steps and their order are those of the dispatcher xen-api generates
    (``ocaml/idl/ocaml_backend/gen_server.ml``: ``gen_module`` and
    ``operation``; ``ocaml/xapi/server_helpers.ml``: ``do_dispatch``).
    """
    is_async = name.startswith("Async.")
    # server_helpers.ml, sync_ty_and_maybe_remove_prefix: every error below
    # names the message without its Async. prefix.
    inner = name[len("Async."):] if is_async else name
    message = _lookup(inner)
    if message is None:
        # gen_server.ml, gen_module: a name it does not know, called with
        # parameters, is tried as a XAPI extension, its first parameter
        # checked as a session first; xapi_extensions.ml, find_extension:
        # then MESSAGE_METHOD_UNKNOWN.
        if params:
            check_session(host, params[0])
        raise errors.XapiError(errors.MESSAGE_METHOD_UNKNOWN, inner)
    _check_count(message, params)
    params = params[:message.arity]
    if message.unmarshal is not None:
        message.unmarshal(params)
    if message.needs_session:
        check_session(host, params[0])
    if is_async and not message.async_ok:
        # server_helpers.ml, do_dispatch: API.response_of_fault, which is a
        # failure whose description starts with "Fault".
        raise errors.XapiError(errors.FAULT,
                               "No async mode for this operation (rpc: %s)" % inner)
    faults.check(inner)  # tests only: armed failures (dom0/simulator/faults.py)
    if is_async:
        return start_async(host, message, params)
    result = _run(host, message, params)
    return "" if result is None else result


def _xml_text(text):
    # rpclib's Xmlrpc.encode: the four markup characters become entities and
    # control characters other than tab, LF and CR are dropped.
    out = []
    for char in text:
        if char in _ENTITIES:
            out.append(_ENTITIES[char])
        elif char >= " " or char in "\t\n\r":
            out.append(char)
    return "".join(out)


_ENTITIES = {">": "&gt;", "<": "&lt;", "&": "&amp;", '"': "&quot;"}


def _rpc_xml(value, out):
    """One value as rpclib's Xmlrpc.to_string writes it (ocaml-rpc xmlrpc.ml,
    add_value): no whitespace, strings without a <string> tag, int64 bare."""
    if value is None:
        out.append("<value><nil/></value>")
    elif isinstance(value, bool):
        out.append("<value><boolean>%d</boolean></value>" % value)
    elif isinstance(value, int):
        out.append("<value>%d</value>" % value)
    elif isinstance(value, float):
        out.append("<value><double>%.16g</double></value>" % value)
    elif isinstance(value, xmlrpc.client.DateTime):
        out.append("<value><dateTime.iso8601>%s</dateTime.iso8601></value>" % value.value)
    elif isinstance(value, (list, tuple)):
        out.append("<value><array><data>")
        for item in value:
            _rpc_xml(item, out)
        out.append("</data></array></value>")
    elif isinstance(value, dict):
        out.append("<value><struct>")
        for name, item in value.items():
            out.append("<member><name>%s</name>" % _xml_text(str(name)))
            _rpc_xml(item, out)
            out.append("</member>")
        out.append("</struct></value>")
    else:
        out.append("<value>%s</value>" % _xml_text(str(value)))


def task_value_text(value):
    """A return value as XAPI stores it in ``task.result``.

    taskHelper.ml, complete and set_result_on_task: the message's result
    marshaller's value, written by Xmlrpc.to_string. A message returning
    nothing has the marshaller ``fun _ -> Rpc.String ""`` (gen_server.ml,
    operation), so its result is ``<value></value>``, not empty.
    """
    out = []
    _rpc_xml("" if value is None else value, out)
    return "".join(out)


# Like XAPI's garbage collector, forget finished tasks nobody destroyed after
# an hour, so the database does not grow with every unchecked upload.
FINISHED_TASK_TTL = datetime.timedelta(hours=1)


def _collect_old_tasks(host):
    cutoff = (datetime.datetime.now(datetime.timezone.utc) - FINISHED_TASK_TTL).strftime(
        "%Y%m%dT%H:%M:%SZ")
    for ref, task in list(host.store.table("task").items()):
        # The text form sorts in time order.
        if task["status"] != "pending" and task["finished"] < cutoff:
            host.store.remove("task", ref)


def new_task(host, session_ref, label, description=""):
    with host.store.lock:
        _collect_old_tasks(host)
        record = model.TASK.new_record(
            name_label=label, name_description=description, created=model.now_text(),
            resident_on=host.host_ref)
        ref = host.store.add("task", record)
        session = host.store.table("session").get(session_ref)
        if session is not None:
            session["tasks"].append(ref)
    # Tasks are not persisted (db.TRANSIENT): nothing to write.
    return ref


def finish_task(host, task_ref, result=None, error=None):
    """Record a task's outcome (success with ``result`` text, or ``error`` list)."""
    with host.store.lock:
        record = host.store.table("task").get(task_ref)
        if record is None:  # destroyed by its owner meanwhile
            return
        if error is None:
            record.update(status="success", result=result or "", progress=1.0)
        else:
            record.update(status="failure", error_info=[str(e) for e in error], progress=1.0)
        record["finished"] = model.now_text()
        host.store.modified("task", task_ref)


def start_async(host, message, params):
    task_ref = new_task(host, params[0], "Async.%s" % message.name)

    def work():
        try:
            value = _run(host, message, params)
        except errors.XapiError as e:
            finish_task(host, task_ref, error=e.description)
        except Exception as e:  # a bug must fail the task, not hang its waiters
            LOG.exception("Async.%s failed", message.name)
            finish_task(host, task_ref, error=[errors.INTERNAL_ERROR, str(e)])
        else:
            finish_task(host, task_ref, result=task_value_text(value))

    threading.Thread(target=work, name="task-%s" % message.name, daemon=True).start()
    return task_ref

