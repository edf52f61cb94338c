"""The dom0 plugin files as XAPI and dom0's Python 3.6 will meet them."""

import ast
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))
PLUGIN_DIR = os.path.join(REPO, "dom0", "plugins")
PLUGINS = ("partition_utils.py", "vhd_images.py", "kernel.py", "console.py")
HELPERS = ("nxs_pluginlib.py", "nxs_mbr.py", "nxs_vhd.py")
OWN_MODULES = {"XenAPIPlugin", "nxs_pluginlib", "nxs_mbr", "nxs_vhd"}


def _tree(name):
    with open(os.path.join(PLUGIN_DIR, name)) as f:
        return ast.parse(f.read(), name)


def test_plugins_pass_the_python_3_6_compatibility_check():
    vermin = os.path.join(os.path.dirname(sys.executable), "vermin")
    proc = subprocess.run([vermin, "--no-tips", "--violations", "-t=3.6-", PLUGIN_DIR],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_plugins_are_ruff_clean_although_the_project_config_excludes_them():
    # Excluded in pyproject.toml because ruff's py311 target does not fit
    # them; named explicitly here with the oldest target ruff knows.
    ruff = os.path.join(os.path.dirname(sys.executable), "ruff")
    paths = [os.path.join(PLUGIN_DIR, name) for name in PLUGINS + HELPERS]
    proc = subprocess.run([ruff, "check", "--target-version", "py37"] + paths,
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("name", PLUGINS + HELPERS)
def test_plugins_avoid_subprocess_keywords_that_python_3_6_lacks(name):
    for node in ast.walk(_tree(name)):
        if isinstance(node, ast.Call):
            keywords = {k.arg for k in node.keywords}
            assert not keywords & {"capture_output", "text"}, (name, node.lineno)


@pytest.mark.parametrize("name", PLUGINS + HELPERS)
def test_plugins_import_only_the_standard_library_and_xenapiplugin(name):
    for node in ast.walk(_tree(name)):
        if isinstance(node, ast.Import):
            modules = [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            modules = [node.module.split(".")[0]]
        else:
            continue
        for module in modules:
            assert module in OWN_MODULES or module in sys.stdlib_module_names, \
                "%s imports %s" % (name, module)


@pytest.mark.parametrize("name", PLUGINS)
def test_plugins_are_executable_python3_scripts_committed_as_such(name):
    path = os.path.join(PLUGIN_DIR, name)
    with open(path) as f:
        assert f.readline() == "#!/usr/bin/env python3\n"
    assert os.stat(path).st_mode & 0o111 == 0o111
    mode = subprocess.run(["git", "ls-files", "-s", path], cwd=REPO, capture_output=True,
                          text=True, timeout=30).stdout.split()
    if mode:  # a file not yet committed has no index mode to check
        assert mode[0] == "100755"


@pytest.mark.parametrize("name", HELPERS)
def test_helper_modules_are_not_executable_so_xapi_cannot_run_them(name):
    assert os.stat(os.path.join(PLUGIN_DIR, name)).st_mode & 0o111 == 0


@pytest.mark.parametrize("name", PLUGINS)
def test_plugins_end_with_a_sigterm_handler_and_a_dispatch_table_of_their_verbs(name):
    body = _tree(name).body
    guard = body[-1]
    assert isinstance(guard, ast.If)
    # SIGTERM is turned into an exit that runs the clean-up, then the verbs run.
    first, call = (statement.value for statement in guard.body)
    assert isinstance(first.func, ast.Name) and first.func.id == "finally_on_sigterm"
    assert call.func.attr == "dispatch" and call.func.value.id == "XenAPIPlugin"
    table = call.args[0]
    functions = {n.name for n in body if isinstance(n, ast.FunctionDef)}
    for key, value in zip(table.keys, table.values, strict=True):
        assert key.value == value.id and value.id in functions
