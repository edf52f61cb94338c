"""The house's rules, read from the code's own imports with ``ast``.

Driver and agent stand side by side on ``rpc`` and the small shared base
``nova_xen_split.xenhost``; neither stands on the other. The dom0 plugins
and the simulator are the other side of a wire and share nothing with the
product. The marks left on XAPI objects are spelled in one module.
"""

import ast
import os
import pathlib
import sys

import pytest

from nova_xen_split.xenhost import marks

ROOT = pathlib.Path(__file__).resolve().parents[3]
SHARED_BASE = "nova_xen_split.xenhost"


def _modules(folder):
    return sorted(p for p in (ROOT / folder).rglob("*.py") if ".venv" not in p.parts)


def _imports(path):
    """``(line, module)`` of every import in a file, relative ones resolved."""
    tree = ast.parse(path.read_text(), str(path))
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[:len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            found.append((node.lineno, base))
            found += [(node.lineno, "%s.%s" % (base, alias.name)) for alias in node.names]
    return found


def _within(module, package):
    return module == package or module.startswith(package + ".")


def _violations(folder, allowed):
    """Imports of project packages from ``folder`` that ``allowed(module)`` refuses."""
    ours = ("agent", "rpc", "nova_xen_split", "dom0", "tests", "bench")
    bad = []
    for path in _modules(folder):
        for line, module in _imports(path):
            if module.split(".")[0] in ours and not allowed(module):
                bad.append("%s:%d imports %s" % (path.relative_to(ROOT), line, module))
    return bad


def test_the_agent_imports_only_rpc_and_the_shared_base():
    assert _violations("agent", lambda m: _within(m, "agent") or _within(m, "rpc")
                       or _within(m, SHARED_BASE) or m == "nova_xen_split") == []


def test_rpc_imports_nothing_of_the_driver_or_the_agent():
    assert _violations("rpc", lambda m: _within(m, "rpc")) == []


def test_the_shared_base_imports_only_rpc_errors():
    assert _violations("nova_xen_split/xenhost", lambda m: _within(m, SHARED_BASE)
                       or m == "nova_xen_split" or _within(m, "rpc.exceptions")
                       or m == "rpc") == []


def test_the_driver_imports_no_agent_module():
    assert _violations("nova_xen_split", lambda m: not _within(m, "agent")
                       and not _within(m, "dom0") and not _within(m, "tests")) == []


@pytest.mark.parametrize("folder", ["agent", "rpc"])
def test_the_agent_and_rpc_never_import_nova(folder):
    bad = ["%s:%d" % (path.relative_to(ROOT), line) for path in _modules(folder)
           for line, module in _imports(path) if _within(module, "nova")]
    assert bad == []


def test_only_the_nova_driver_package_imports_nova():
    virt = ROOT / "nova_xen_split" / "virt"
    bad = ["%s:%d" % (path.relative_to(ROOT), line)
           for path in _modules("nova_xen_split") if virt not in path.parents
           for line, module in _imports(path) if _within(module, "nova")]
    assert bad == []


def test_dom0_plugins_import_nothing_of_ours():
    plugin_dir = ROOT / "dom0" / "plugins"
    siblings = {p.stem for p in plugin_dir.glob("*.py")}
    bad = []
    for path in _modules("dom0/plugins"):
        for line, module in _imports(path):
            top = module.split(".")[0]
            if top in ("agent", "rpc", "nova_xen_split", "dom0", "tests", "bench"):
                bad.append("%s:%d imports %s" % (path.name, line, module))
            elif top not in siblings and top != "XenAPIPlugin" \
                    and top not in sys.stdlib_module_names:
                bad.append("%s:%d imports %s, not in dom0's standard library"
                           % (path.name, line, module))
    assert bad == []


def test_no_product_code_imports_the_simulator():
    for folder in ("agent", "rpc", "nova_xen_split"):
        assert _violations(folder, lambda m: not _within(m, "dom0")) == []


def test_the_simulator_imports_nothing_of_the_product():
    assert _violations("dom0/simulator", lambda m: _within(m, "dom0.simulator")) == []


def test_benchmarks_do_not_import_the_tests():
    assert _violations("bench", lambda m: not _within(m, "tests")) == []


# -- the marks -----------------------------------------------------------------

def _mark_literals():
    """The key strings marks.py defines (its private ``_VM_*``, ``_VDI_*``...)."""
    keys = {value for name, value in vars(marks).items()
            if name.startswith(("_VM_", "_VDI_", "_VBD_", "_VIF_", "_PENDING"))
            and isinstance(value, str)}
    keys |= {marks._VM_BOOT_FILE % kind for kind in marks.BOOT_FILE_KINDS}
    return keys


def _string_constants(path):
    """String literals of a file, docstrings left out (they may name a key)."""
    tree = ast.parse(path.read_text(), str(path))
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docstrings.add(id(body[0].value))
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and id(node) not in docstrings]


def test_the_xapi_mark_strings_appear_in_one_module():
    keys = _mark_literals()
    assert set(marks.vm_marks("i")) | set(marks.vbd_marks("a")) <= keys  # the scan sees them
    home = ROOT / "nova_xen_split" / "xenhost" / "marks.py"
    bad = []
    for folder in ("agent", "rpc", "nova_xen_split", "dom0", "tests", "bench"):
        for path in _modules(folder):
            if path == home:
                continue
            for line, text in _string_constants(path):
                if text in keys or any(text.startswith(key) for key in keys
                                       if key.endswith("-")):
                    bad.append("%s:%d %r" % (path.relative_to(ROOT), line, text))
    assert bad == []


def test_the_root_is_the_repository():
    assert os.path.isdir(ROOT / "nova_xen_split" / "xenhost")
