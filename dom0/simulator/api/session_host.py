"""session, host and task messages beyond the generated accessors."""

import hmac

from dom0.simulator import errors
from dom0.simulator.api import dispatch
from dom0.simulator.api import unmarshal
from dom0.simulator.api.registry import message

USERNAME = "root"


@message("session.login_with_password", needs_session=False)
def login_with_password(host, uname, pwd, version="1.0", originator=""):
    if not (isinstance(uname, str) and isinstance(pwd, str)):
        raise errors.XapiError(errors.FIELD_TYPE_ERROR, "uname")
    ok_user = hmac.compare_digest(uname.encode(), USERNAME.encode())
    ok_pwd = hmac.compare_digest(pwd.encode(), host.password.encode())
    if not (ok_user and ok_pwd):
        raise errors.XapiError(
            errors.SESSION_AUTHENTICATION_FAILED, uname, "Authentication failure")
    return host.sessions.login(host.host_ref, str(originator))


@message("session.logout")
def logout(host, session):
    # XAPI destroys a session's finished tasks with it.
    host.sessions.destroy(session)


def _unmarshal_call_plugin(params):
    # gen_server.ml, operation: host, plugin and fn are unmarshalled with
    # rpclib's string_of_rpc, args as a (string -> string) map
    # (ppx_deriving_rpc), before the session check; a wrong value fails as
    # an OCaml Failure, which the caller gets as INTERNAL_ERROR.
    _, host_ref, plugin, fn, args = params
    for value in (host_ref, plugin, fn):
        unmarshal.check_string(value)
    unmarshal.check_string_map(args)


@message("host.call_plugin", locked=False, async_ok=True, unmarshal=_unmarshal_call_plugin)
def call_plugin(host, session, host_ref, plugin, fn, args):
    with host.store.lock:
        host.store.get("host", host_ref)
    return host.plugins.call(session, plugin, fn, args)


@message("task.create")
def task_create(host, session, label, description):
    if not isinstance(label, str) or not isinstance(description, str):
        raise errors.XapiError(errors.FIELD_TYPE_ERROR, "label")
    return dispatch.new_task(host, session, label, description)


@message("task.destroy")
def task_destroy(host, session, task):
    host.store.get("task", task)
    host.store.remove("task", task)
    for record in host.store.table("session").values():
        if task in record["tasks"]:
            record["tasks"].remove(task)

