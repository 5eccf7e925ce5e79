"""Fixtures shared by the integration modules."""

import pytest

from integration.servers import hostile_servers


@pytest.fixture(scope="module")
def servers():
    """The hostile image server and the canary on loopback, once per module: (image_port, canary)."""
    with hostile_servers() as (image_port, canary):
        yield image_port, canary
