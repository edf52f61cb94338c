"""The driver's end of the wire under eventlet's monkey-patching.

nova-compute can still run under eventlet (OS_NOVA_DISABLE_EVENTLET_PATCHING
unset and [DEFAULT] concurrency_mode = eventlet), where select.poll does not
exist. The client runs in a child process that patches everything first,
as nova-compute does, then calls a real agent over the local socket, twice:
the second call takes the idle connection, whose liveness is checked with
a selector before it is reused.
"""

import os
import subprocess
import sys
import textwrap

from tests.functional.agent.test_service import write_config

CLIENT = textwrap.dedent("""
    import eventlet
    eventlet.monkey_patch()
    import select, sys
    assert not hasattr(select, "poll"), "eventlet left select.poll in place"

    from oslo_config import cfg
    from nova_xen_split.xenhost import conf as nxs_conf
    from rpc import client
    from rpc.transports import local_server  # noqa: F401 -- it imports patched too

    conf = cfg.ConfigOpts()
    nxs_conf.register_opts(conf)
    conf(["--config-file", sys.argv[1]], project="nova-xen-split", default_config_files=[])
    api = client.AgentAPI(conf)
    modes = [api.describe()["mode"] for _ in range(2)]
    api.close()
    print("modes", *modes)
""")


def test_a_client_under_eventlet_calls_the_agent_twice(tmp_path, make_sim):
    sim = make_sim()
    config, _host = write_config(tmp_path, sim, "independent")
    agent = subprocess.Popen([sys.executable, "-m", "agent.service", "--config-file",
                              str(config)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        # Nova's native-threading switch, set for this test run, is not
        # wanted in a process that chooses eventlet.
        env = {k: v for k, v in os.environ.items()
               if k != "OS_NOVA_DISABLE_EVENTLET_PATCHING"}
        out = subprocess.run([sys.executable, "-c", CLIENT, str(config)], capture_output=True,
                             text=True, timeout=120, env=env)
    finally:
        agent.terminate()
        agent.wait(timeout=60)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "modes independent independent" in out.stdout
