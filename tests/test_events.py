"""Every event name datasetd emits is listed once in logs.EVENTS, and every listed name is emitted.

Scripts and alerts match on these names, so the list is the contract; this reads the
package's source (AST) for the names it logs.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import datasetd
from datasetd.logs import EVENTS

PACKAGE = Path(datasetd.__file__).parent
LEVELS = {"debug", "info", "warning", "error", "exception", "critical"}
NAME = re.compile(r"^[a-z][a-z_]*\.[a-z][a-z_]*$")


def _strings(node: ast.expr) -> list[str]:
    """The literal strings an argument can be: a constant, or either branch of `a if c else b`."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.IfExp):
        return _strings(node.body) + _strings(node.orelse)
    return []


def emitted() -> dict[str, str]:
    """event name -> where it is emitted (file:line)."""
    out: dict[str, str] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            where = f"{path.relative_to(PACKAGE)}:{node.lineno}"
            if name in LEVELS | {"_logged", "emit"}:
                for event in _strings(node.args[0]):
                    if NAME.match(event):
                        out.setdefault(event, where)
            # Hands.event(component, verb) and the verb handed to _record_unit: class.* for class-tars
            # units, tree.* for flat ones.
            verbs = _strings(node.args[1]) if name == "event" and len(node.args) == 2 else \
                _strings(node.args[-1]) if name == "_record_unit" else []
            for verb in verbs:
                for prefix in ("class", "tree"):
                    out.setdefault(f"{prefix}.{verb}", where)
    return out


def test_every_emitted_event_is_listed() -> None:
    unlisted = {name: where for name, where in emitted().items() if name not in EVENTS}
    assert not unlisted, f"emitted but not in logs.EVENTS: {unlisted}"


def test_every_listed_event_is_emitted() -> None:
    found = emitted()
    never = sorted(name for name in EVENTS if name not in found)
    assert not never, f"in logs.EVENTS but never emitted: {never}"


def test_structlog_imported_without_asyncio_still_logs_from_async_code() -> None:
    """logs.py hands structlog a stand-in for asyncio (a cold start spared); the first async log
    call must import the real asyncio through it and write its line."""
    stderr = _fresh_python("from datasetd import logs",
                           "assert 'asyncio' not in sys.modules, 'structlog pulled asyncio in'",
                           "logs.configure(json=True, level='info')",
                           "import asyncio",
                           "asyncio.run(logs.get().ainfo('apply.started', manifest='m.toml'))")
    assert json.loads(stderr.splitlines()[-1])["event"] == "apply.started"


def test_a_deferred_module_read_while_still_deferring_is_the_real_one() -> None:
    _fresh_python("from datasetd.logs import deferring",
                  "assert 'colorsys' not in sys.modules",
                  "with deferring('colorsys'):",
                  "    import colorsys",
                  "    assert colorsys.rgb_to_hsv(1.0, 0.0, 0.0) == (0.0, 1.0, 1.0)",
                  "assert sys.modules['colorsys'] is not colorsys and colorsys.ONE_THIRD == 1.0 / 3.0")


def _fresh_python(*lines: str) -> str:
    """Run `lines` in a new interpreter (nothing imported yet but `sys`); its stderr."""
    done = subprocess.run([sys.executable, "-c", "\n".join(["import sys", *lines])], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stderr
