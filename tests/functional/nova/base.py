"""Nova 34's own functional-test fixtures, with our driver loaded by name.

Each test runs Nova's API (over WSGI), conductor, scheduler, placement and a
real nova-compute service whose ``compute_driver`` is
``xensplit.XenSplitDriver``, on an in-memory database, as Nova's own
functional tests do. Outside Nova's process stand the real parts: an
``xapi-sim`` process, the run's real Glance (``[glance] api_servers`` of
both Nova and the agent; Nova's GlanceFixture is not used, so Nova's image
API speaks to it through glanceclient), and ``nova-xen-split-agent`` as its
own process on the agent's config file, over the local socket or RabbitMQ.
Only Neutron is Nova's fixture: there is no Neutron here.
"""

import os
import sys
import uuid

import fixtures
from nova import test
from nova.tests import fixtures as nova_fixtures
from nova.tests.functional import fixtures as func_fixtures
from nova.tests.functional import integrated_helpers

from nova_xen_split.cmd import demo_env
from nova_xen_split.virt import conf as virt_conf
from nova_xen_split.xenhost import marks
from tests.conftest import RABBIT_URL, SIM_PASSWORD, SimProcess

# Seconds of polling the API for a server's state (0.5 s per retry).
WAIT_RETRIES = 240
CONF = test.CONF
API_PASTE = os.path.join(sys.prefix, "etc", "nova", "api-paste.ini")


class XenSplitTestCase(test.TestCase, integrated_helpers.PlacementInstanceHelperMixin):
    """One hypervisor (xapi-sim), its agent and a Nova deployment on it.

    ``COMPUTE_VM``: the simulator presents a compute VM, so the agent
    runs in ``in_guest`` mode; else ``independent``. ``TRANSPORT``:
    ``unix`` or ``rabbit``. ``glance_server`` (the run's Glance) and
    ``image_id`` (a raw disk in it) are set by the conftest's fixture.
    """

    COMPUTE_VM = False
    TRANSPORT = "unix"
    SIM_ARGS = ()
    microversion = "latest"
    glance_server = None
    image_id = None

    def setUp(self):
        super().setUp()
        self.host = "nxs-nova-%s" % uuid.uuid4().hex[:10]
        self.work = self.useFixture(fixtures.TempDir()).path
        self._start_hypervisor()
        self._start_nova()

    def _clear_attrs(self):
        # Nova's TestCase drops every public attribute after a test; pytest
        # has put the test method among them and removes it itself.
        for key in [k for k in self.__dict__ if k[0] != "_" and k != self._testMethodName]:
            del self.__dict__[key]

    # -- the parts outside Nova ---------------------------------------------

    def _start_hypervisor(self):
        self.sim = SimProcess(os.path.join(self.work, "sim"), compute_vm=self.COMPUTE_VM,
                              extra_args=list(self.SIM_ARGS)).start()
        self.addCleanup(self.sim.stop)
        transport_url = None
        if self.TRANSPORT == "rabbit":
            transport_url = RABBIT_URL
            self.addCleanup(_delete_queue, "nova-xen-split-agent.%s" % self.host)
        self.agent_config = demo_env.write_config(
            os.path.join(self.work, "nova-xen-split.conf"), self.sim, self.host,
            self.glance_server.url, self.work, transport_url=transport_url,
            vm_uuid=self.sim.compute_vm_uuid)
        self.agent_url = transport_url or "unix://" + os.path.join(self.work, "agent.sock")
        self.agent = demo_env.Agent(self.agent_config,
                                    os.path.join(self.work, "agent.log")).start()
        self.addCleanup(self.agent.stop)

    # -- Nova ----------------------------------------------------------------

    def _start_nova(self):
        virt_conf.register_opts(CONF)
        self.flags(compute_driver="xensplit.XenSplitDriver",
                   allow_resize_to_same_host=True, manager_shutdown_timeout=30)
        self.flags(connection_url=self.sim.url, connection_password=SIM_PASSWORD,
                   group="xenserver")
        self.flags(transport_url=self.agent_url, startup_timeout=60, rpc_timeout=120,
                   group="xensplit")
        # The nova wheel installs its api-paste.ini as data, under the
        # environment's prefix, not where Nova's test fixture looks for it.
        self.flags(api_paste_config=API_PASTE, group="wsgi")
        self.useFixture(nova_fixtures.RealPolicyFixture())
        self.neutron = self.useFixture(nova_fixtures.NeutronFixture(self))
        self.flags(api_servers=[self.glance_server.url], group="glance")
        self.useFixture(nova_fixtures.CinderFixture(self))
        self.placement = self.useFixture(func_fixtures.PlacementFixture()).api
        self.notifier = self.useFixture(nova_fixtures.NotificationFixture(self))
        self.api_fixture = self.useFixture(nova_fixtures.OSAPIFixture(api_version="v2.1"))
        self.api = self.admin_api = self.api_fixture.admin_api
        self._send_a_token()
        self.api.microversion = self.microversion
        self.start_service("conductor")
        self.start_service("scheduler")
        self.compute = self.start_service("compute", host=self.host)

    def _send_a_token(self):
        """Requests carry a token into Nova's context, as through
        keystonemiddleware: Nova's image API hands the context's token to
        Glance and will not call it without one (keystoneauth's
        AuthorizationFailure). Nova's API fixture builds contexts without
        it; this Glance, without authentication, ignores its value."""
        from nova.api import auth

        make_context = auth.NovaKeystoneContext._create_context

        def with_token(env, **kwargs):
            return make_context(env, auth_token=env.get("HTTP_X_AUTH_TOKEN"), **kwargs)

        self.useFixture(fixtures.MonkeyPatch(
            "nova.api.auth.NovaKeystoneContext._create_context", with_token))
        request = self.api.request

        def request_with_token(url, method="GET", body=None, headers=None):
            headers = dict(headers or {}, **{"X-Auth-Token": "nxs-functional-test"})
            return request(url, method=method, body=body, headers=headers)

        self.api.request = request_with_token

    # -- helpers -------------------------------------------------------------

    def _flavor(self, name, memory_mb=256, vcpus=1, disk=1, swap=0, ephemeral=0):
        return self.api.post_flavor({"flavor": {
            "name": name, "ram": memory_mb, "vcpus": vcpus, "disk": disk, "swap": swap,
            "OS-FLV-EXT-DATA:ephemeral": ephemeral}})["id"]

    def _boot(self, flavor_id, expected_state="ACTIVE"):
        body = self._build_server(name="nxs-%s" % uuid.uuid4().hex[:6],
                                  image_uuid=self.image_id, flavor_id=flavor_id,
                                  networks=[{"port": self.neutron.port_1["id"]}])
        server = self.api.post_server({"server": body})
        return self._wait_for_state_change(server, expected_state, max_retries=WAIT_RETRIES)

    def _wait(self, server, status):
        return self._wait_for_state_change(server, status, max_retries=WAIT_RETRIES)

    def _xapi(self):
        session = self.sim.session()
        self.addCleanup(session.xenapi.session.logout)
        return session.xenapi

    def _guest_vms(self):
        """Records of the simulator's VMs that are neither dom0 nor the compute VM."""
        xapi = self._xapi()
        compute_vm = self.sim.compute_vm_uuid
        return [rec for rec in xapi.VM.get_all_records().values()
                if not rec["is_control_domain"] and rec["uuid"] != compute_vm]

    def _left_on_the_simulator(self):
        """What a server could have left: guest VMs, their VIFs and VBDs, and
        VDIs (but for the image cache's, which stay for the next boot)."""
        xapi = self._xapi()
        vms = self._guest_vms()
        vdis = [vdi for vdi in xapi.VDI.get_all_records().values()
                if marks.read_cache(vdi["other_config"]) is None]
        return {"VM": len(vms), "VIF": len(xapi.VIF.get_all()),
                "VBD": sum(len(vm["VBDs"]) for vm in vms), "VDI": len(vdis)}


def _delete_queue(name):
    import subprocess

    subprocess.run(["rabbitmqctl", "-q", "delete_queue", name], capture_output=True,
                   timeout=60)
