"""Credentials in the URLs callmfa prints or logs are masked, by one helper."""

from __future__ import annotations

import pytest

from ivr.exceptions import DirectoryError
from ivr.fronts.webhooks import _redacted
from ivr.ops.doctor import check_redis
from ivr.redaction import redacted_url
from ivr.settings import Settings
from ivr.storage.ldap import LdapDirectory
from ivr.storage.webhooks import Delivery

SECRET = "S3cret"


class TestRedactedUrl:
    @pytest.mark.parametrize(("url", "shown"), [
        ("redis://127.0.0.1:6393/0?password=S3cret", "redis://127.0.0.1:6393/0?password=***"),
        ("redis://u:S3cret@h:1/0", "redis://u:***@h:1/0"),
        ("redis://:S3cret@h/0", "redis://:***@h/0"),
        ("redis://u:p@ss:S3cret@h/0", "redis://u:***@h/0"),
        ("redis://h/0?db=1&PassWord=S3cret&ssl_password=S3cret&client_name=x",
         "redis://h/0?db=1&PassWord=***&ssl_password=***&client_name=x"),
        ("https://hook/x?Token=S3cret&api_key=S3cret&a=1", "https://hook/x?Token=***&api_key=***&a=1"),
        ("https://hook/x?client%5Fsecret=S3cret", "https://hook/x?client%5Fsecret=***"),
        ("ldaps://cn=svc:S3cret@ldap.example.com", "ldaps://cn=svc:***@ldap.example.com"),
        ("redis://alice@h/0", "redis://alice@h/0"),  # a user name alone is no secret
        ("rediss://h:6380/2", "rediss://h:6380/2"),
        ("redis://[::1/0?password=S3cret", "***"),  # does not parse: nothing shown
    ])
    def test_passwords_and_sensitive_parameters_are_masked(self, url: str, shown: str) -> None:
        assert redacted_url(url) == shown

    def test_without_the_query(self) -> None:
        assert redacted_url("https://u:S3cret@hook/x?sig=1", query=False) == "https://u:***@hook/x"


class TestWhereUrlsAreShown:
    async def test_check_does_not_print_a_password_in_the_query(self) -> None:
        """`callmfa check` printed CALLMFA_REDIS_URL='redis://...?password=S3cret' as is."""
        settings = Settings(redis_url=f"redis://127.0.0.1:1/0?password={SECRET}",
                            connect_timeout_s=1)
        [result] = [r async for r in check_redis(settings)]
        assert "redis://127.0.0.1:1/0?password=***" in result.message
        assert SECRET not in result.message

    async def test_the_ldap_directory_masks_its_url(self) -> None:
        settings = Settings(ldap_url=f"ldap://127.0.0.1:1?password={SECRET}",
                            ldap_base_dn="dc=example,dc=com", ldap_timeout_s=1)
        d = LdapDirectory(settings)
        assert SECRET not in repr(d)
        with pytest.raises(DirectoryError) as e:
            await d.ping()
        assert SECRET not in str(e.value)
        assert "password=***" in str(e.value)

    def test_a_webhook_target_in_the_logs_has_no_password(self) -> None:
        d = Delivery("1-0", {"channel": "webhook", "target": f"https://u:{SECRET}@h/x?t=1",
                             "payload": "{}"})
        assert _redacted(d) == "https://u:***@h/x"
