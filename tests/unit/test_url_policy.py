"""The address policy, proven without connecting anywhere."""

import pytest
from yarl import URL

from classifiers.errors import ModerationError
from deployments.settings import FetchSettings
from deployments.url_policy import AddressPolicy, check_url

DEFAULT = FetchSettings()
POLICY = AddressPolicy.from_settings(DEFAULT)


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1",
     "0.0.0.0", "224.0.0.1", "240.0.0.1", "::1", "fc00::1", "fe80::1", "::ffff:127.0.0.1",
     "::ffff:10.0.0.1", "not-an-ip"],
)
def test_non_public_addresses_are_refused(address):
    assert not POLICY.allows(address)


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700::1111"])
def test_public_addresses_are_allowed(address):
    assert POLICY.allows(address)


def test_allow_list_opens_only_the_listed_network():
    policy = AddressPolicy.from_settings(FetchSettings(allowed_networks=("127.0.0.0/8",)))
    assert policy.allows("127.0.0.1") and policy.allows("::ffff:127.0.0.1")
    assert not policy.allows("10.0.0.1") and not policy.allows("::1")


@pytest.mark.parametrize(
    "url",
    ["ftp://example.com/a.jpg", "file:///etc/passwd", "http://user:pw@example.com/a.jpg",
     "http://example.com:8080/a.jpg", "http://127.0.0.1/a.jpg", "http://[::1]/a.jpg",
     "http://169.254.169.254/latest/meta-data", "http://[::ffff:127.0.0.1]/a.jpg", "http:///a.jpg"],
)
def test_urls_refused_before_any_connection(url):
    with pytest.raises(ModerationError) as info:
        check_url(URL(url), DEFAULT, POLICY)
    assert info.value.code == "url_forbidden"


def test_public_name_passes_the_pre_connect_check():
    check_url(URL("https://images.example.com/cat.jpg?sig=abc"), DEFAULT, POLICY)
