"""DNS answers are filtered by the address policy (a stub resolver: nothing is looked up)."""

import asyncio
import socket

import pytest
from aiohttp.abc import AbstractResolver

from classifiers.errors import ModerationError
from deployments.fetching import GuardedResolver
from deployments.settings import FetchSettings
from deployments.url_policy import AddressPolicy


class StubResolver(AbstractResolver):
    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers

    async def resolve(self, host, port=0, family=socket.AF_INET):
        return [
            {"hostname": host, "host": a, "port": port, "family": socket.AF_INET6 if ":" in a
             else socket.AF_INET, "proto": 0, "flags": socket.AI_NUMERICHOST}
            for a in self.answers[host]
        ]

    async def close(self):
        pass


ANSWERS = {
    "metadata.evil.test": ["169.254.169.254"],
    "private.evil.test": ["10.0.0.7", "192.168.1.1"],
    "rebind.evil.test": ["127.0.0.1"],
    "mapped.evil.test": ["::ffff:10.0.0.1"],
    "mixed.example.test": ["93.184.216.34", "10.0.0.1", "::1"],
    "public.example.test": ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"],
}


def resolve(host: str, policy: AddressPolicy = AddressPolicy()):
    return asyncio.run(GuardedResolver(policy, StubResolver(ANSWERS)).resolve(host, 80))


@pytest.mark.parametrize("host", ["metadata.evil.test", "private.evil.test", "rebind.evil.test",
                                  "mapped.evil.test"])
def test_names_resolving_only_to_forbidden_addresses_are_refused(host):
    with pytest.raises(ModerationError) as info:
        resolve(host)
    assert info.value.code == "url_forbidden"


def test_forbidden_answers_are_dropped_so_they_are_never_connected_to():
    assert [r["host"] for r in resolve("mixed.example.test")] == ["93.184.216.34"]
    assert len(resolve("public.example.test")) == 2


def test_allow_listed_network_resolves():
    policy = AddressPolicy.from_settings(FetchSettings(allowed_networks=("127.0.0.0/8",)))
    assert [r["host"] for r in resolve("rebind.evil.test", policy)] == ["127.0.0.1"]
