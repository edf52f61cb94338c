"""``host.call_plugin`` as XAPI runs it (xen-api ``ocaml/xapi/xapi_plugins.ml``).

The plugin is exec'd from the plugin directory with one argument, an XML-RPC
``methodCall`` named after the function with params ``[session_ref, args]``,
and its stdout is read back as an XML-RPC response. XAPI's failures:

* a name not in the plugin directory → ``XENAPI_MISSING_PLUGIN [name]``
* a non-zero exit → ``XENAPI_PLUGIN_FAILURE ['non-zero exit', stdout, stderr]``
* killed by a signal → ``XENAPI_PLUGIN_FAILURE ['signal: SIGxxx', stdout, stderr]``
* output that is not XML-RPC → ``['failed to parse plugin output', stdout, why]``
* a fault → ``['fault', code, reason]``; anything but one string →
  ``['unexpected XMLRPC result', stdout]``
* a ``Failure`` response → that error description, as the plugin gave it
  (``UNKNOWN_XENAPI_PLUGIN_FUNCTION``, ``XENAPI_PLUGIN_FAILURE [fn, class, msg]``)

A plugin that outlives ``--plugin-timeout`` is killed (its whole process
group) and reported as ``['timeout', stdout, stderr]``.
"""

import logging
import os
import signal
import subprocess
import xml.parsers.expat
import xmlrpc.client

from dom0.simulator import errors

LOG = logging.getLogger(__name__)

PLUGINLIB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pluginlib")


class PluginRunner:
    def __init__(self, plugin_dir, timeout, environment):
        self.plugin_dir = os.path.abspath(plugin_dir)
        self.timeout = timeout
        self.environment = environment

    def _find(self, plugin):
        # XAPI only runs a name listed in its plugin directory: no paths.
        try:
            names = os.listdir(self.plugin_dir)
        except OSError:
            names = []
        if not isinstance(plugin, str) or plugin not in names or plugin in (".", ".."):
            raise errors.XapiError(errors.XENAPI_MISSING_PLUGIN, plugin)
        path = os.path.join(self.plugin_dir, plugin)
        if not os.path.isfile(path):
            raise errors.XapiError(errors.XENAPI_MISSING_PLUGIN, plugin)
        return path

    def call(self, session_ref, plugin, fn, args):
        """Run ``fn`` of ``plugin`` with the str→str map ``args``; returns a string.

        The types were checked when the call was unmarshalled (session_host).
        """
        path = self._find(plugin)
        request = xmlrpc.client.dumps((session_ref, args), fn, allow_none=True)
        env = dict(os.environ, PYTHONPATH=PLUGINLIB, **self.environment)
        LOG.info("plugin %s %s %s", plugin, fn, sorted(args))
        try:
            proc = subprocess.Popen(
                [path, request], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        except OSError as e:
            raise errors.XapiError(
                errors.XENAPI_PLUGIN_FAILURE, "non-zero exit", "",
                "cannot execute %s: %s" % (plugin, e.strerror)) from None
        try:
            out, err = proc.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            raise errors.XapiError(
                errors.XENAPI_PLUGIN_FAILURE, "timeout", _text(out), _text(err)) from None
        out, err = _text(out), _text(err)
        if proc.returncode < 0:
            raise errors.XapiError(
                errors.XENAPI_PLUGIN_FAILURE,
                "signal: %s" % signal.Signals(-proc.returncode).name, out, err)
        if proc.returncode != 0:
            raise errors.XapiError(errors.XENAPI_PLUGIN_FAILURE, "non-zero exit", out, err)
        return _parse_response(out)


def _text(data):
    return data.decode("utf-8", "replace")


def _parse_response(out):
    try:
        values, _ = xmlrpc.client.loads(out)
    except xmlrpc.client.Fault as fault:
        raise errors.XapiError(
            errors.XENAPI_PLUGIN_FAILURE, "fault", fault.faultCode, fault.faultString) from None
    except (xml.parsers.expat.ExpatError, ValueError, TypeError) as e:
        raise errors.XapiError(
            errors.XENAPI_PLUGIN_FAILURE, "failed to parse plugin output", out, str(e)) from None
    if len(values) == 1 and isinstance(values[0], dict):
        response = values[0]
        if response.get("Status") == "Success" and isinstance(response.get("Value"), str):
            return response["Value"]
        description = response.get("ErrorDescription")
        if (response.get("Status") == "Failure" and isinstance(description, list)
                and description):
            raise errors.XapiError(*[str(d) for d in description])
    raise errors.XapiError(errors.XENAPI_PLUGIN_FAILURE, "unexpected XMLRPC result", out)
