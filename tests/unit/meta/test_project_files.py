"""The product's front door: README commands, CI script and sample config agree."""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def _read(*parts):
    with open(os.path.join(ROOT, *parts)) as f:
        return f.read()


def _readme_commands():
    blocks = re.findall(r"```\n(.*?)\n```", _read("README.md"), re.S)
    return [b.strip() for b in blocks if b.strip().startswith("bash .ci/install")]


def test_readme_gives_exactly_two_fresh_machine_commands():
    commands = _readme_commands()
    assert len(commands) == 2, commands
    assert "nova-xen-split demo" in commands[0]
    assert "pytest" in commands[1]


def test_ci_runs_the_readme_test_command():
    test_command = _readme_commands()[1].split("&&", 1)[1].strip()
    install_command = _readme_commands()[1].split("&&", 1)[0].strip()
    ci_lines = [line.strip() for line in _read(".ci", "run").splitlines()]
    assert install_command in ci_lines
    assert test_command in ci_lines
    assert "export NXS_REQUIRE_REAL=1" in ci_lines


@pytest.mark.parametrize("generator, sample", [
    ("nova-xen-split-config-generator.conf", "nova-xen-split.conf.sample"),
    ("nova-xen-split-nova-config-generator.conf", "nova.conf.sample-xensplit"),
])
def test_sample_config_is_up_to_date(tmp_path, generator, sample):
    out = tmp_path / "sample.conf"
    subprocess.run(
        [sys.executable, "-m", "oslo_config.generator",
         "--config-file", os.path.join(ROOT, "etc", generator),
         "--output-file", str(out)],
        check=True, cwd=ROOT, capture_output=True, timeout=120)
    committed = _read("etc", sample)
    # A comment block may stand before what the generator writes (nova.conf's
    # sample says there how Nova loads the driver).
    header, _, generated = ("\n" + committed).partition("\n[DEFAULT]\n")
    assert all(line.startswith("#") or not line for line in header.splitlines())
    assert out.read_text() == "[DEFAULT]\n" + generated, (
        "etc/%s is stale: run tox -e genconfig" % sample)


def test_nova_sample_says_how_nova_loads_the_driver():
    assert "compute_driver = xensplit.XenSplitDriver" in _read("etc", "nova.conf.sample-xensplit")


def test_xapi_sim_help_shows_no_markup():
    out = subprocess.run([sys.executable, "-m", "dom0.simulator.server", "--help"],
                         capture_output=True, text=True, cwd=ROOT, timeout=60).stdout
    assert "``" not in out and "XAPI host" in out


def test_the_agent_help_says_what_it_is_and_that_it_needs_its_config_file():
    out = subprocess.run([sys.executable, "-m", "agent.service", "--help"],
                         capture_output=True, text=True, cwd=ROOT, timeout=60).stdout
    assert "companion agent of nova-xen-split" in " ".join(out.split())
    assert "--config-file" in out
