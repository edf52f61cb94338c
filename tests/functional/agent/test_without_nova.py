"""The agent starts and serves where Nova cannot be imported.

The agent runs in small containers or guests that have no Nova. Rather than
build a second virtualenv without it (minutes of installing, and a venv
that could differ from this one in more than Nova), the agent's process
gets a first import finder that refuses every ``nova`` and ``nova.*``
module exactly as a missing package does (``ModuleNotFoundError``), and
then runs ``nova-xen-split-agent``'s own ``main``. Any import of Nova on
any path the agent takes to serve a call fails it. The static rule
(tests/unit/meta/test_layout.py) says the same of the source; this says it
of the running process, with every library it pulls in.
"""

import subprocess
import sys
import textwrap

from oslo_config import cfg

from nova_xen_split.xenhost import conf as nxs_conf
from rpc import client as rpc_client
from tests.functional.agent.test_service import write_config

NOVA_BLOCKED = textwrap.dedent("""
    import importlib.abc, sys

    class NoNova(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "nova" or name.startswith("nova."):
                raise ModuleNotFoundError("No module named %r" % name, name=name)
            return None

    sys.meta_path.insert(0, NoNova())
    try:
        import nova  # noqa: F401
    except ModuleNotFoundError:
        pass
    else:
        sys.exit("the block does not work")
    from agent.service import main
    sys.argv[0] = "nova-xen-split-agent"
    sys.exit(main())
""")


def test_the_agent_serves_describe_with_nova_unimportable(tmp_path, make_sim):
    sim = make_sim()
    config, _host = write_config(tmp_path, sim, "independent")
    proc = subprocess.Popen([sys.executable, "-c", NOVA_BLOCKED, "--config-file", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    conf = cfg.ConfigOpts()
    nxs_conf.register_opts(conf)
    conf(["--config-file", str(config)], project="nova-xen-split", default_config_files=[])
    api = rpc_client.AgentAPI(conf)
    try:
        description = api.check_version()
        assert description["mode"] == "independent"
        assert description["host_uuid"]
        assert proc.poll() is None
    finally:
        api.close()
        proc.terminate()
        output = proc.communicate(timeout=60)[0]
    assert "No module named 'nova" not in output, output
    assert "independent mode" in output
