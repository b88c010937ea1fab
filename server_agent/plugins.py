"""Business health plugins: a team's own check that its model answers sensibly.

An initContainer copies plugins into a shared volume; the agent is pointed at
it with ``--plugin-dir``. Each regular file there whose name does not start
with ``_`` or ``.`` is a plugin, checked in name order; all must pass.

**Python module** (``*.py``) exposing::

    def check(ctx: PluginContext) -> bool | tuple[bool, str]: ...

``ctx`` (:class:`PluginContext`) carries ``target`` ("host:port" of the
model server in this pod), ``predict(model, inputs) -> outputs`` (a callable
the agent supplies: ``inputs`` and ``outputs`` map tensor names to arrays or
nested lists; it raises on any RPC error), ``timeout`` (seconds this check
may take) and ``params`` (strings from the agent's configuration). Return
True, or ``(ok, reason)``. Raising counts as a failure whose reason is the
exception.

**Executable** (any other file with an execute bit): run with no arguments
and the environment variables ``WEI_TARGET``, ``WEI_TIMEOUT`` and one
``WEI_PLUGIN_<KEY>`` per param; exit 0 is healthy and the first line of
stdout (else stderr) is the reason.

Whatever a plugin does -- raises, hangs, has a syntax error, is missing, is
not executable -- the result is a failed :class:`ProbeResult` naming the
plugin and why, never an exception in the agent. A Python plugin runs in a
daemon worker thread with a timeout (loading included: a module that loops at
import hangs that thread, not the agent). A thread cannot be killed, so a
plugin still hung from an earlier call is not started again: it fails at once
with "still running", and at most one thread per plugin is ever stuck.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType, ModuleType
from typing import Any

from .config import PluginConfig
from .probes.handlers import ExecHandler
from .probes.result import ProbeResult, Timer

__all__ = ["ExecutablePlugin", "Plugin", "PluginContext", "PluginSet", "PythonPlugin", "discover"]

Predict = Callable[[str, Mapping[str, Any]], Mapping[str, Any]]


def _no_predict(model: str, inputs: Mapping[str, Any]) -> Mapping[str, Any]:
    raise RuntimeError("no predict callable was given to this plugin's context")


@dataclass(frozen=True, kw_only=True)
class PluginContext:
    """What a Python plugin's ``check(ctx)`` receives (see the module docstring)."""

    target: str
    predict: Predict = _no_predict
    timeout: float = 5.0
    params: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", MappingProxyType(dict(self.params)))


def _normalise(name: str, value: object, timer: Timer) -> ProbeResult:
    """Accept True/False or (ok, reason); anything else is the plugin's bug, reported as such."""
    reason = ""
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], str):
        value, reason = value
    if isinstance(value, bool) or type(value).__name__ == "bool_":  # numpy.bool_ too
        ok = bool(value)
        return timer.ok(reason) if ok else timer.fail(f"plugin {name}: {reason or 'unhealthy'}")
    return timer.fail(f"plugin {name}: check returned {value!r}; expected a bool or (bool, str)")


class PythonPlugin:
    """A ``*.py`` plugin. Loaded in the worker thread; reloaded when the file changes."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = Path(path)
        self.name = self.path.name
        self._clock = clock
        self._module: ModuleType | None = None
        self._loaded_key: tuple[int, int] | None = None
        self._running: threading.Thread | None = None
        self._running_since = 0.0

    def _load(self) -> ModuleType:
        st = self.path.stat()  # FileNotFoundError is reported like any other failure
        key = (st.st_mtime_ns, st.st_size)
        if self._module is not None and key == self._loaded_key:
            return self._module
        mod_name = f"wei_health_plugin_{self.path.stem}_{abs(hash(self.path))}"
        spec = importlib.util.spec_from_file_location(mod_name, self.path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load {self.path} as a Python module")
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module  # dataclasses and pickling in a plugin look themselves up there
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(mod_name, None)
            raise
        if not callable(getattr(module, "check", None)):
            raise AttributeError("no check(ctx) function")
        self._module, self._loaded_key = module, key
        return module

    def check(self, ctx: PluginContext) -> ProbeResult:
        timer = Timer(self._clock)
        if self._running is not None and self._running.is_alive():
            return timer.fail(f"plugin {self.name}: still running from an earlier check "
                              f"({self._clock() - self._running_since:.1f}s, hung?)")
        box: list[ProbeResult] = []

        def work() -> None:
            try:
                box.append(_normalise(self.name, self._load().check(ctx), timer))
            except SyntaxError as e:
                box.append(timer.fail(f"plugin {self.name}: syntax error at line {e.lineno}: {e.msg}"))
            except FileNotFoundError:
                box.append(timer.fail(f"plugin {self.name}: missing ({self.path})"))
            except BaseException as e:  # noqa: BLE001 -- a plugin's SystemExit must not end the agent either
                box.append(timer.fail(f"plugin {self.name}: raised {_describe(e)}"))

        thread = threading.Thread(target=work, name=f"wei-plugin-{self.name}", daemon=True)
        self._running, self._running_since = thread, self._clock()
        thread.start()
        thread.join(ctx.timeout)
        if thread.is_alive() or not box:
            return timer.fail(f"plugin {self.name}: timed out after {ctx.timeout:g}s")
        return box[0]

    def __repr__(self) -> str:
        return f"<PythonPlugin {self.path}>"


def _describe(e: BaseException) -> str:
    where = traceback.extract_tb(e.__traceback__)[-1:] if e.__traceback__ else []
    at = f" at {Path(where[0].filename).name}:{where[0].lineno}" if where else ""
    return f"{type(e).__name__}: {e}{at}"


class ExecutablePlugin:
    """An executable plugin, run with a subprocess timeout (its whole process group is killed)."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = Path(path)
        self.name = self.path.name
        self._clock = clock

    def check(self, ctx: PluginContext) -> ProbeResult:
        """The exec probe handler runs it; a failure's reason names the plugin."""
        env = {**os.environ, "WEI_TARGET": ctx.target, "WEI_TIMEOUT": f"{ctx.timeout:g}"}
        env.update({f"WEI_PLUGIN_{k.upper()}": v for k, v in ctx.params.items()})
        result = ExecHandler([str(self.path)], env=env, cwd=str(self.path.parent), clock=self._clock).check(ctx.timeout)
        return result if result.ok else replace(result, reason=f"plugin {self.name}: {result.reason}")

    def __repr__(self) -> str:
        return f"<ExecutablePlugin {self.path}>"


Plugin = PythonPlugin | ExecutablePlugin


def discover(plugin_dir: Path, *, clock: Callable[[], float] = time.monotonic) -> list[Plugin]:
    """The plugins in ``plugin_dir``, in name order (raises OSError if it cannot be listed)."""
    plugins: list[Plugin] = []
    for path in sorted(Path(plugin_dir).iterdir()):
        if path.name.startswith(("_", ".")) or not path.is_file():
            continue
        if path.suffix == ".py":
            plugins.append(PythonPlugin(path, clock=clock))
        elif os.access(path, os.X_OK):
            plugins.append(ExecutablePlugin(path, clock=clock))
    return plugins


class PluginSet:
    """All plugins of a directory, checked in order; the first failure is the result.

    A check takes at most the sum of the plugins' timeouts; used as a probe
    handler, give that probe a ``timeout_seconds`` of at least ``timeout_s``
    (the probe's timeout caps each plugin's).

    The directory is listed again on every check, so plugins that arrive late
    (a slow initContainer, a ConfigMap update) are picked up; already-seen
    plugins keep their state (loaded module, hung thread).
    """

    def __init__(self, config: PluginConfig, *, predict: Predict = _no_predict, target: str = "",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self._ctx = PluginContext(target=target, predict=predict, timeout=config.timeout_s, params=config.params)
        self._clock = clock
        self._known: dict[Path, Plugin] = {}

    def _plugins(self) -> list[Plugin]:
        found = discover(self.config.plugin_dir, clock=self._clock)
        current = {p.path: self._known.get(p.path, p) for p in found}
        self._known = current
        return list(current.values())

    def check(self, timeout: float | None = None) -> ProbeResult:
        """Run every plugin; usable as a probe :class:`Handler` (``timeout`` caps each plugin)."""
        timer = Timer(self._clock)
        ctx = self._ctx
        if timeout is not None:
            ctx = PluginContext(target=ctx.target, predict=ctx.predict, params=ctx.params,
                                timeout=min(timeout, self.config.timeout_s))
        try:
            plugins = self._plugins()
        except OSError as e:
            return timer.fail(f"plugin dir {self.config.plugin_dir}: {e.strerror or e}")
        if not plugins:
            if self.config.required:
                return timer.fail(f"plugin dir {self.config.plugin_dir}: no plugins (*.py or executables)")
            return timer.ok("no plugins")
        for plugin in plugins:
            result = plugin.check(ctx)
            if not result.ok:
                return timer.fail(result.reason)
        return timer.ok(f"{len(plugins)} plugin(s) passed")

    def __repr__(self) -> str:
        return f"<PluginSet {self.config.plugin_dir} known={[p.name for p in self._known.values()]}>"
