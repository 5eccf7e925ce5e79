"""Fakes behind the ``DeploymentHandle`` interface, for unit tests of how the ingress and
``InClusterClient`` call the model: ``handle.<method>.remote(...)`` answers scripted outcomes."""

from __future__ import annotations

from types import SimpleNamespace

import grpc
from grpc.aio import AioRpcError, Metadata


def rpc_error(code: grpc.StatusCode) -> AioRpcError:
    """What a handle call by value raises when its gRPC call ends with ``code``."""
    return AioRpcError(code, Metadata(), Metadata(), f"{code.name} from the fake")


class FakeResponse:
    """Like a ``DeploymentResponse``: ``result()`` and ``await`` answer ``outcome``, or raise it;
    each answer is logged as ``("result", handle name)``."""

    def __init__(self, outcome, log: list, name: str) -> None:
        self.outcome, self.log, self.name, self.cancelled = outcome, log, name, False

    def result(self):
        self.log.append(("result", self.name))
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome

    def __await__(self):
        if False:
            yield
        return self.result()

    def cancel(self) -> None:
        self.cancelled = True


class FakeHandle:
    """``handle.<method>.remote(payload, ...)`` logs ``(name, method, payload)`` and answers the
    next of ``outcomes``."""

    def __init__(self, name: str, outcomes: list, log: list) -> None:
        self.name, self.outcomes, self.log = name, outcomes, log

    def __getattr__(self, method: str):
        def remote(payload, *args, **kwargs):
            self.log.append((self.name, method, payload))
            return FakeResponse(self.outcomes.pop(0), self.log, self.name)

        return SimpleNamespace(remote=remote)


def calls_in(log: list) -> list[tuple]:
    """The calls a log holds, without the answers."""
    return [entry for entry in log if entry[0] != "result"]
