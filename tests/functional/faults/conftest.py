"""Faults injected into real processes: a simulator killed mid-import, a
private RabbitMQ node stopped or killed at each spawn step, agents and
simulators stopped by signals. Every test ends by checking that nothing of
the instance is left once the parts are back and the agent has settled."""

from tests.functional.agent.conftest import image_server, make_agent  # noqa: F401
