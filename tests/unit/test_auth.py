"""API keys, rate limits and the headers their errors carry (no Ray, no network)."""

import asyncio

import pytest
from pydantic import ValidationError

from classifiers.errors import ModerationError
from deployments.auth import Gatekeeper, bearer_token, hash_key, new_key
from deployments.responses import as_moderation_error, error_headers
from deployments.settings import ApiKey, AuthSettings

KEY, OTHER = "mod_first", "mod_second"


def gatekeeper(**settings) -> Gatekeeper:
    keys = (ApiKey(name="first", sha256=hash_key(KEY)),
            ApiKey(name="second", sha256=hash_key(OTHER), rate_limit="1/minute"))
    return Gatekeeper(AuthSettings(api_keys=keys, **settings))


def test_auth_is_off_without_keys():
    open_door = Gatekeeper(AuthSettings())
    assert not open_door.enabled and open_door.authenticate(None) is None
    asyncio.run(open_door.admit(None))


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer ", "Basic bW9kOng=", f"Token {KEY}",
                                    "Bearer mod_wrong", f"Bearer {KEY}x"])
def test_missing_or_wrong_keys_are_401(header):
    with pytest.raises(ModerationError) as raised:
        gatekeeper().authenticate(header)
    assert raised.value.code == "unauthorized"
    assert error_headers(raised.value) == {"WWW-Authenticate": "Bearer"}


def test_valid_keys_name_their_holder():
    keeper = gatekeeper()
    assert keeper.authenticate(f"Bearer {KEY}") == "first"
    assert keeper.authenticate(f"bearer   {OTHER}") == "second"
    assert bearer_token(f"Bearer {KEY}") == KEY


def test_new_keys_are_random_and_hash_to_what_config_holds():
    (key_a, hash_a), (key_b, _) = new_key(), new_key()
    assert key_a != key_b and key_a.startswith("mod_") and len(key_a) > 40
    assert hash_a == hash_key(key_a) and len(hash_a) == 64
    assert ApiKey(name="a", sha256=hash_a).sha256 == hash_a


def test_rate_limit_per_key_and_default():
    async def run(keeper, name, n):
        outcomes = []
        for _ in range(n):
            try:
                await keeper.admit(name)
                outcomes.append("ok")
            except ModerationError as error:
                outcomes.append(error)
        return outcomes

    keeper = gatekeeper(rate_limit="3/minute")
    first = asyncio.run(run(keeper, "first", 4))
    assert first[:3] == ["ok"] * 3
    limited = first[3]
    assert limited.code == "rate_limited" and limited.status == 429
    assert 1 <= limited.retry_after_s <= 60
    assert error_headers(limited) == {"Retry-After": str(limited.retry_after_s)}
    second = asyncio.run(run(keeper, "second", 2))  # its own limit overrides the default
    assert second[0] == "ok" and second[1].code == "rate_limited"
    assert asyncio.run(run(gatekeeper(), "first", 10)) == ["ok"] * 10  # no default: unlimited


def test_settings_reject_bad_hashes_limits_and_duplicates():
    with pytest.raises(ValidationError):
        ApiKey(name="a", sha256="not-a-hash")
    with pytest.raises(ValidationError):
        AuthSettings(rate_limit="many per day")
    with pytest.raises(ValidationError, match="duplicate"):
        AuthSettings(api_keys=[{"name": "a", "sha256": hash_key("x")}, {"name": "a", "sha256": hash_key("y")}])
    with pytest.raises(ValidationError):
        AuthSettings(api_keys=[{"name": "a", "sha256": hash_key("x"), "rate_limit": "fast"}])


def test_dead_replicas_and_backpressure_are_retryable_503s():
    from ray.exceptions import ActorDiedError
    from ray.serve.exceptions import BackPressureError

    died = as_moderation_error(ActorDiedError())
    overloaded = as_moderation_error(BackPressureError(num_queued_requests=5, max_queued_requests=4))
    assert (died.code, died.status) == ("model_unavailable", 503)
    assert (overloaded.code, overloaded.status) == ("overloaded", 503)
    assert error_headers(died) == error_headers(overloaded) == {"Retry-After": "1"}


def test_launcher_prints_a_key_and_only_its_hash_for_the_config(capsys):
    import re

    import yaml

    from deployments.launch import main

    assert main(["--new-api-key", "forum"]) == 0
    out = capsys.readouterr().out
    key = re.search(r"^\s+(mod_\S+)$", out, re.M).group(1)
    entry = yaml.safe_load(out.splitlines()[-1].strip())[0]
    assert entry == {"name": "forum", "sha256": hash_key(key)}
    assert key not in out.splitlines()[-1]


def test_concurrent_requests_cannot_overrun_the_limit():
    """A storage that yields between calls (as a network store does) must still admit 2 of 10."""
    from limits.aio.storage import MemoryStorage
    from limits.aio.strategies import MovingWindowRateLimiter

    class YieldingStorage(MemoryStorage):
        async def acquire_entry(self, *args, **kwargs):
            await asyncio.sleep(0)
            return await super().acquire_entry(*args, **kwargs)

        async def get_moving_window(self, *args, **kwargs):
            await asyncio.sleep(0)
            return await super().get_moving_window(*args, **kwargs)

    keeper = gatekeeper()
    keeper._limiter = MovingWindowRateLimiter(YieldingStorage())

    async def attempt():
        try:
            await keeper.admit("second")  # 1/minute
            return True
        except ModerationError:
            return False

    async def burst():
        return await asyncio.gather(*(attempt() for _ in range(10)))

    assert sum(asyncio.run(burst())) == 1


@pytest.mark.parametrize(("path", "root", "expected"), [
    ("/v1/classify", "", "/v1/classify"),
    ("/guarded/v1/classify", "/guarded", "/v1/classify"),
    ("/guarded", "/guarded", "/"),
    ("/v1/classify", "/guarded", "/v1/classify"),  # servers that strip the prefix themselves
])
def test_route_path_drops_the_application_prefix(path, root, expected):
    from deployments.auth import route_path

    assert route_path({"path": path, "root_path": root}) == expected


def test_settings_reject_limits_without_keys_and_sync_storages():
    with pytest.raises(ValidationError, match="per API key"):
        AuthSettings(rate_limit="1/second")
    for storage in ("memory://", "redis://localhost:6379", "async+nosuch://"):
        with pytest.raises(ValidationError, match="rate_limit_storage"):
            AuthSettings(rate_limit_storage=storage)
    with pytest.raises(ValidationError):
        ApiKey(name="team #1", sha256=hash_key("x"))  # would print as broken YAML
