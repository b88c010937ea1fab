"""Real MLServer pods (see pods.py): ``mlserver_pod(**PodSpec fields)`` starts one, ready, and stops
it at teardown. Skips, saying how to get it, where .venv-mlserver is missing (``make test`` builds it)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from pods import MLSERVER, MLServerPod, PodSpec, available


def _require_mlserver() -> None:
    if not available():
        pytest.skip(f"MLServer is not installed ({MLSERVER} is missing): `make test` installs it, "
                    f"or `make mlserver-venv` alone")


@pytest.fixture
def mlserver_pod(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., MLServerPod]]:
    _require_mlserver()
    pods: list[MLServerPod] = []

    def start(**spec: object) -> MLServerPod:
        pod = MLServerPod(tmp_path_factory.mktemp("mlserver"), PodSpec(**spec))  # type: ignore[arg-type]
        pods.append(pod)
        return pod.start()

    yield start
    for pod in pods:
        pod.stop()


@pytest.fixture(scope="module")
def shared_mlserver_pod(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MLServerPod]:
    """One default pod for a whole module (a start costs ~1 s); tests that kill or stop a pod use
    ``mlserver_pod``."""
    _require_mlserver()
    pod = MLServerPod(tmp_path_factory.mktemp("mlserver"), PodSpec()).start()
    yield pod
    pod.stop()
