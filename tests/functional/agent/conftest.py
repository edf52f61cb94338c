"""Agents against a running ``xapi-sim``, and a loopback image service."""

import os
import uuid

import pytest
from oslo_config import cfg

from agent import detect
from agent import endpoint as agent_endpoint
from agent.backends import base, make_backend
from nova_xen_split.cmd.image_service import ImageService
from nova_xen_split.xenhost import conf as nxs_conf
from nova_xen_split.xenhost import marks


@pytest.fixture
def image_server():
    """The image service: downloads carry the file's MD5 as Glance's do;
    records have no multihash (as images uploaded before Glance's Rocky)
    and no location unless ``show_locations``."""
    with ImageService().start() as server:
        yield server


def agent_conf(sim, mode, tmp_path, image_server=None, overrides=None):
    """A ConfigOpts for an agent of ``sim`` in ``mode`` (in_guest|independent);
    ``overrides`` maps (group, option) to a value."""
    conf = cfg.ConfigOpts()
    nxs_conf.register_opts(conf)
    conf([], project="nova-xen-split-test")
    host_tag = "agent-test-%s" % uuid.uuid4().hex[:8]
    conf.set_override("host", host_tag)
    conf.set_override("state_path", str(tmp_path))
    xs = {"connection_url": sim.url, "connection_password": sim.password,
          "xenstore_read_command": ["false"], "login_timeout": 10}
    if mode == "in_guest":
        vm_uuid = sim.compute_vm_uuid
        xs.update(vm_uuid_file=os.path.join(sim.state_dir, "vms", vm_uuid, "sys",
                                            "hypervisor", "uuid"),
                  device_dir=sim.vm_dev_dir(vm_uuid), independent_compute="false")
    else:
        xs.update(vm_uuid_file=str(tmp_path / "no-such-uuid-file"),
                  independent_compute="true")
    for key, value in xs.items():
        conf.set_override(key, value, group="xenserver")
    # The image cache is off unless a test asks for it: these tests are
    # about the fetch paths themselves.
    conf.set_override("cache_images", "none", group="xenserver")
    conf.set_override("privsep_start_method", "fork", group="agent")
    conf.set_override("socket_path", str(tmp_path / "agent.sock"), group="agent")
    if image_server is not None:
        conf.set_override("api_servers", [image_server.url], group="glance")
    for (group, key), value in (overrides or {}).items():
        conf.set_override(key, value, group=group)
    return conf


class Harness:
    """One agent backend in this process (privsep daemon forked as root)."""

    def __init__(self, sim, conf):
        self.sim = sim
        self.conf = conf
        self.sessions = base.Sessions(conf)
        session = detect.login(conf)
        self.sessions.adopt(session)
        self.ctx = detect.detect(conf, session, self.sessions)
        self.backend = make_backend(self.ctx)
        self.endpoint = agent_endpoint.AgentEndpoint(self.backend)
        self.backend.start()

    @property
    def session(self):
        return self.sessions.get()

    def close(self):
        self.backend.stop()
        self.sessions.close()

    # -- what the simulator holds ------------------------------------------

    def tagged_vbds(self):
        return [ref for ref, rec in self.session.call("VBD.get_all_records").items()
                if marks.vbd_agent(rec.get("other_config")) == self.ctx.tag]

    def agent_vdis(self, state=None):
        found = []
        for rec in self.session.call("VDI.get_all_records").values():
            mark = marks.read_vdi(rec.get("other_config"))
            if mark and mark.agent == self.ctx.tag and state in (None, mark.state):
                found.append(rec)
        return found

    def vdi_uuids(self):
        return {rec["uuid"] for rec in self.session.call("VDI.get_all_records").values()}


@pytest.fixture
def make_agent(tmp_path):
    """``make_agent(sim, mode, image_server=None)`` → Harness, closed afterwards."""
    harnesses = []

    def factory(sim, mode, image_server=None, overrides=None):
        conf = agent_conf(sim, mode, tmp_path, image_server, overrides)
        harness = Harness(sim, conf)
        harnesses.append(harness)
        return harness

    yield factory
    for harness in harnesses:
        harness.close()


@pytest.fixture(params=["in_guest", "independent"])
def agent(request, make_sim, loop_devices, image_server, make_agent):
    """An agent in each mode, against its own simulator."""
    mode = request.param
    sim = make_sim(compute_vm=(mode == "in_guest"))
    return make_agent(sim, mode, image_server)
