"""Health plugins: every way a plugin can go wrong is a failed result, never a dead agent."""

from __future__ import annotations

import math
import shutil
import stat
import textwrap
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

import server_agent.plugins_examples as examples
from server_agent.config import PluginConfig
from server_agent.errors import ConfigError
from server_agent.plugins import ExecutablePlugin, PluginContext, PluginSet, PythonPlugin, discover
from server_agent.probes import Handler

SHORT = 0.3
EXAMPLES = Path(examples.__file__).parent


def write(dirpath: Path, name: str, text: str, *, executable: bool = False) -> Path:
    path = dirpath / name
    path.write_text(textwrap.dedent(text).lstrip())
    if executable:
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def ctx(**kw: Any) -> PluginContext:
    return PluginContext(target="127.0.0.1:8500", timeout=kw.pop("timeout", SHORT), **kw)


PY_CASES = [
    ("returns True", "def check(ctx):\n    return True\n", True, ""),
    ("returns (True, note)", "def check(ctx):\n    return True, f'target {ctx.target}'\n", True,
     "target 127.0.0.1:8500"),
    ("returns (False, why)", "def check(ctx):\n    return False, 'golden score 1.7'\n", False,
     "plugin p.py: golden score 1.7"),
    ("returns False", "def check(ctx):\n    return False\n", False, "plugin p.py: unhealthy"),
    ("raises", "def check(ctx):\n    raise RuntimeError('model missing')\n", False,
     "plugin p.py: raised RuntimeError: model missing at p.py:2"),
    ("exits", "import sys\ndef check(ctx):\n    sys.exit(3)\n", False, "plugin p.py: raised SystemExit: 3 at p.py:3"),
    ("syntax error", "def check(ctx)\n    return True\n", False, "plugin p.py: syntax error at line 1: expected ':'"),
    ("no check", "x = 1\n", False, "plugin p.py: raised AttributeError: no check(ctx) function"),
    ("wrong return type", "def check(ctx):\n    return 'yes'\n", False,
     "plugin p.py: check returned 'yes'; expected a bool or (bool, str)"),
    ("import fails", "import no_such_module_here\ndef check(ctx):\n    return True\n", False,
     "plugin p.py: raised ModuleNotFoundError: No module named 'no_such_module_here'"),
    ("dataclass in plugin", "from dataclasses import dataclass\n@dataclass\nclass R:\n    ok: bool\n"
     "def check(ctx):\n    return R(True).ok\n", True, ""),
]


@pytest.mark.parametrize("name,source,ok,reason", PY_CASES, ids=[c[0] for c in PY_CASES])
def test_python_plugin_outcomes(tmp_path, name, source, ok, reason):
    res = PythonPlugin(write(tmp_path, "p.py", source)).check(ctx())
    assert res.ok is ok
    assert res.reason.startswith(reason), res.reason


def test_python_plugin_that_hangs_times_out_and_is_not_started_twice(tmp_path):
    plugin = PythonPlugin(write(tmp_path, "hang.py", """
        import threading
        def check(ctx):
            threading.Event().wait()  # forever
    """))
    start = time.monotonic()
    res = plugin.check(ctx())
    assert not res.ok and res.reason == f"plugin hang.py: timed out after {SHORT:g}s"
    assert time.monotonic() - start < 2.0
    res = plugin.check(ctx())  # the first thread is still stuck: fail at once, start nothing
    assert not res.ok and "still running" in res.reason and res.latency < 0.1


def test_python_plugin_that_hangs_at_import_times_out(tmp_path):
    plugin = PythonPlugin(write(tmp_path, "loop.py", "import threading\nthreading.Event().wait()\n"))
    res = plugin.check(ctx())
    assert not res.ok and "timed out" in res.reason


def test_missing_python_plugin(tmp_path):
    res = PythonPlugin(tmp_path / "gone.py").check(ctx())
    assert not res.ok and res.reason.startswith("plugin gone.py: missing")


def test_python_plugin_is_reloaded_when_the_file_changes(tmp_path):
    path = write(tmp_path, "p.py", "def check(ctx):\n    return False, 'v1'\n")
    plugin = PythonPlugin(path)
    assert plugin.check(ctx()).reason.endswith("v1")
    path.write_text("def check(ctx):\n    return True, 'version two'\n")
    assert plugin.check(ctx()).reason == "version two"


def test_plugin_gets_the_predict_callable_and_params(tmp_path):
    calls: list[tuple[str, Mapping[str, Any]]] = []

    def predict(model: str, inputs: Mapping[str, Any]) -> Mapping[str, Any]:
        calls.append((model, inputs))
        return {"y": [[1.0]]}

    plugin = PythonPlugin(write(tmp_path, "p.py", """
        def check(ctx):
            out = ctx.predict(ctx.params["model"], {"x": [[1.0]]})
            return out["y"][0][0] == 1.0, "called"
    """))
    assert plugin.check(ctx(predict=predict, params={"model": "ctr"})).ok
    assert calls == [("ctr", {"x": [[1.0]]})]


EXEC_CASES = [
    ("ok", "#!/bin/sh\necho \"healthy at $WEI_TARGET\"\n", True, "healthy at 127.0.0.1:8500"),
    ("fails", "#!/bin/sh\necho 'score out of range' >&2\nexit 2\n", False, "plugin e: exit 2: score out of range"),
    ("params", "#!/bin/sh\ntest \"$WEI_PLUGIN_MODEL\" = ctr && echo \"timeout $WEI_TIMEOUT\"\n", True, "timeout 0.3"),
    ("hangs", "#!/bin/sh\nsleep 30\n", False, f"plugin e: timed out after {SHORT:g}s"),
    ("bad interpreter", "#!/nonexistent/interpreter\n", False, "plugin e: cannot execute"),
]


@pytest.mark.parametrize("name,script,ok,reason", EXEC_CASES, ids=[c[0] for c in EXEC_CASES])
def test_executable_plugin_outcomes(tmp_path, name, script, ok, reason):
    plugin = ExecutablePlugin(write(tmp_path, "e", script, executable=True))
    start = time.monotonic()
    res = plugin.check(ctx(params={"model": "ctr"}))
    assert res.ok is ok and res.reason.startswith(reason), res.reason
    assert time.monotonic() - start < 3.0


def test_discover_skips_private_hidden_and_non_executable_files(tmp_path):
    write(tmp_path, "b_check.py", "def check(ctx):\n    return True\n")
    write(tmp_path, "a_probe", "#!/bin/sh\nexit 0\n", executable=True)
    write(tmp_path, "_helper.py", "")
    write(tmp_path, ".hidden", "#!/bin/sh\n", executable=True)
    write(tmp_path, "README.txt", "not a plugin")
    (tmp_path / "sub").mkdir()
    found = discover(tmp_path)
    assert [(type(p).__name__, p.name) for p in found] == [("ExecutablePlugin", "a_probe"),
                                                          ("PythonPlugin", "b_check.py")]


def test_plugin_set_passes_only_when_all_pass_and_reports_the_first_failure(tmp_path):
    write(tmp_path, "a.py", "def check(ctx):\n    return True\n")
    write(tmp_path, "b", "#!/bin/sh\necho 'regression output NaN'\nexit 1\n", executable=True)
    plugins = PluginSet(PluginConfig(plugin_dir=tmp_path, timeout_s=SHORT))
    assert isinstance(plugins, Handler)
    res = plugins.check(1.0)
    assert not res.ok and res.reason == "plugin b: exit 1: regression output NaN"
    (tmp_path / "b").unlink()
    res = plugins.check(1.0)
    assert res.ok and res.reason == "1 plugin(s) passed"


def test_plugin_set_missing_or_empty_dir(tmp_path):
    res = PluginSet(PluginConfig(plugin_dir=tmp_path / "nope")).check()
    assert not res.ok and "No such file or directory" in res.reason
    res = PluginSet(PluginConfig(plugin_dir=tmp_path)).check()
    assert not res.ok and "no plugins" in res.reason
    assert PluginSet(PluginConfig(plugin_dir=tmp_path, required=False)).check().ok


def test_plugin_config_validation(tmp_path):
    with pytest.raises(ConfigError):
        PluginConfig(plugin_dir=tmp_path, timeout_s=0)
    with pytest.raises(ConfigError):
        PluginConfig(plugin_dir=tmp_path, params={"k": 1})  # type: ignore[dict-item]


# -- the shipped examples, with a plain function as the model ---------------------------


def model_returning(**outputs: Any):
    seen: list[tuple[str, Mapping[str, Any]]] = []

    def predict(model: str, inputs: Mapping[str, Any]) -> Mapping[str, Any]:
        seen.append((model, inputs))
        return outputs

    return predict, seen


@pytest.mark.parametrize("scores,ok,reason", [
    ([[0.03]], True, "ctr: 1 score(s) in [0, 1]"),
    ([[0.0], [1.0]], True, "ctr: 2 score(s) in [0, 1]"),
    ([[1.7]], False, "ctr/prob: 1 of 1 scores outside [0, 1], e.g. 1.7"),
    ([[float("nan")]], False, "ctr/prob: 1 of 1 scores outside [0, 1], e.g. nan"),
    ([], False, "ctr/prob: empty output for the golden sample"),
])
def test_classification_example(scores, ok, reason):
    predict, seen = model_returning(prob=scores)
    res = PythonPlugin(EXAMPLES / "classification_score.py").check(ctx(predict=predict, timeout=2.0))
    assert (res.ok, res.reason.removeprefix("plugin classification_score.py: ")) == (ok, reason)
    model, inputs = seen[0]
    assert model == "ctr" and len(inputs["dense"][0]) == 13 and len(inputs["sparse"][0]) == 26


def test_classification_example_params_and_arrays():
    np = pytest.importorskip("numpy")
    predict, seen = model_returning(prob=np.array([[0.2, 0.9]], dtype=np.float32), logits=np.array([[4.0]]))
    params = {"model": "ranker", "output": "prob", "golden": '{"x": [[1, 2]]}'}
    res = PythonPlugin(EXAMPLES / "classification_score.py").check(ctx(predict=predict, params=params, timeout=2.0))
    assert res.ok and seen == [("ranker", {"x": [[1, 2]]})]
    res = PythonPlugin(EXAMPLES / "classification_score.py").check(
        ctx(predict=predict, params={"output": "missing"}, timeout=2.0))
    assert not res.ok and "no output 'missing'" in res.reason


@pytest.mark.parametrize("values,params,ok,needle", [
    ([[35.5]], {}, True, "outputs finite and in [0, 86400]"),
    ([[-3.0]], {}, False, "output -3 outside [0, 86400]"),
    ([[math.inf]], {}, False, "non-finite output inf"),
    ([[5.0]], {"min": "10", "max": "20"}, False, "output 5 outside [10, 20]"),
    ([[15.0]], {"min": "10", "max": "20"}, True, "in [10, 20]"),
    ([[15.0]], {"min": "30", "max": "20"}, False, "misconfigured range"),
])
def test_regression_example(values, params, ok, needle):
    predict, _ = model_returning(seconds=values)
    res = PythonPlugin(EXAMPLES / "regression_range.py").check(ctx(predict=predict, params=params, timeout=2.0))
    assert res.ok is ok and needle in res.reason, res.reason


def test_examples_from_a_plugin_dir_with_a_failing_model(tmp_path):
    """As deployed: copied into the shared volume; a predict that raises is a clear failure."""
    shutil.copytree(EXAMPLES, tmp_path / "plugins")

    def predict(model: str, inputs: Mapping[str, Any]) -> Mapping[str, Any]:
        raise ConnectionError(f"UNAVAILABLE: {model} is not loaded")

    res = PluginSet(PluginConfig(plugin_dir=tmp_path / "plugins", timeout_s=2.0), predict=predict).check()
    assert not res.ok
    assert res.reason.startswith("plugin classification_score.py: raised ConnectionError: UNAVAILABLE: ctr")
