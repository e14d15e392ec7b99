"""The user directory's pure parts: numbers to E.164, entries, the CSV import's checks and
the fallback that completes a request from the directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ivr.domain.directory import DirectoryEntry
from ivr.domain.entries import EntryError, directory_entry, parse_csv
from ivr.domain.fallback import ChainedDirectory, resolve
from ivr.domain.numbers import PhoneNumberError, default_region, normalise_phone
from ivr.domain.request import parse_fields, parse_request, request_fields
from ivr.exceptions import RequestError, SettingsError
from ivr.settings import Settings
from ivr.storage.ldap import LdapDirectory, user_filter

RID = "0b6d5c1e-7a8f-4e1b-9c2d-3e4f5a6b7c8d"


class TestNormalisePhone:
    @pytest.mark.parametrize(("text", "expected"), [
        ("+1 (201) 555-0100", "+12015550100"),
        ("+12015550100", "+12015550100"),
        ("(201) 555-0100", "+12015550100"),  # no '+': the default region's
        ("201.555.0100", "+12015550100"),
        ("+1 201 555 0100 x123", "+12015550100x123"),
        ("+12015550100 ext. 45", "+12015550100x45"),
        ("+44 20 7946 0958", "+442079460958"),
        ("  +1-201-555-0100  ", "+12015550100"),
    ])
    def test_forms_are_normalised(self, text: str, expected: str) -> None:
        assert normalise_phone(text, "US") == expected

    def test_the_default_region_reads_national_forms(self) -> None:
        assert normalise_phone("020 7946 0958", "GB") == "+442079460958"

    @pytest.mark.parametrize(("text", "why"), [
        ("", "empty"),
        ("abc", "not a phone number"),
        ("+1 (555) 010-0100", "not a valid number"),  # 555: no such area code
        ("+1201555010", "not a valid number"),  # too short
        ("+12015550100 x12345678901", "too long|extension is 1 to 10 digits"),
    ])
    def test_invalid_numbers_are_refused_with_the_reason(self, text: str, why: str) -> None:
        with pytest.raises(PhoneNumberError, match=why):
            normalise_phone(text, "US")

    def test_without_a_default_region_a_plus_is_needed(self) -> None:
        with pytest.raises(PhoneNumberError, match=r"with \+ and its country code"):
            normalise_phone("2015550100", None)
        assert normalise_phone("+12015550100", None) == "+12015550100"

    @pytest.mark.parametrize(("regions", "expected"), [
        ("US,CA", "US"), ("gb", "GB"), ("*", None), ("001,US", None)])
    def test_default_region_is_the_first_allowed(self, regions: str,
                                                 expected: str | None) -> None:
        assert default_region(regions) == expected


class TestDirectoryEntry:
    def test_normalised(self) -> None:
        e = directory_entry("Alice", "(201) 555-0100", mode="pin", lang="fr-CA", region="US")
        assert e == DirectoryEntry(user="alice", phone="+12015550100", mode="pin",
                                   lang="fr-CA")

    def test_empty_mode_and_lang_are_the_defaults(self) -> None:
        e = directory_entry("bob", "+12015550100", region="US")
        assert (e.mode, e.lang) == ("standard", "en")

    @pytest.mark.parametrize(("user", "phone", "mode", "lang", "why"), [
        ("", "+12015550100", "", "", "user: user must be a non-empty string"),
        ("a\u2028b", "+12015550100", "", "", "user: user must not contain U+2028"),
        ("carol", "12", "", "", "phone: "),
        ("carol", "+12015550100", "sms", "", "mode must be one of match, pin, standard"),
        ("carol", "+12015550100", "", "english!", "lang must be a language tag"),
    ])
    def test_refused_with_the_field_that_is_wrong(
        self, user: str, phone: str, mode: str, lang: str, why: str
    ) -> None:
        with pytest.raises(EntryError, match=why.replace("+", r"\+")):
            directory_entry(user, phone, mode=mode, lang=lang, region="US")


class TestCsv:
    def test_good_file(self) -> None:
        text = ("user,phone,mode,lang\n"
                "Alice,+1 (201) 555-0100,,\n"
                "\n"
                "bob,201-555-0101 x7,pin,fr\n")
        found = parse_csv(text, region="US")
        assert found.refused == []
        assert [(e.user, e.phone, e.mode, e.lang) for e in found.entries] == [
            ("alice", "+12015550100", "standard", "en"),
            ("bob", "+12015550101x7", "pin", "fr"),
        ]

    def test_mode_and_lang_columns_may_be_left_out(self) -> None:
        found = parse_csv("phone,user\n+12015550100,alice\n", region="US")
        assert [(e.user, e.mode) for e in found.entries] == [("alice", "standard")]

    def test_every_refused_row_is_reported_with_its_line(self) -> None:
        text = ("user,phone,mode,lang\n"
                "alice,+12015550100,standard,en\n"       # 2: fine
                "bob,not a number,standard,en\n"         # 3
                "carol,+12015550102,sms,en\n"            # 4
                "dave,+12015550103,standard,??\n"        # 5
                "ALICE,+12015550104,standard,en\n"       # 6: alice again
                "eve,+12015550105\n"                     # 7: too few fields
                ",+12015550106,standard,en\n"            # 8: no user
                '"fr\ned",+12015550107,,\n'              # 9-10: a quoted newline: refused
                "gina,+1 (555) 010-0100,,\n")            # 11: not a valid number
        found = parse_csv(text, region="US")
        lines = [(r.line, r.why) for r in found.refused]
        assert [line for line, _ in lines] == [3, 4, 5, 6, 7, 8, 10, 11]
        why = dict(lines)
        assert "not a phone number" in why[3]
        assert "mode must be one of" in why[4]
        assert "lang must be a language tag" in why[5]
        assert "already on line 2" in why[6]
        assert "2 fields where the header has 4" in why[7]
        assert why[8].startswith("user:")
        assert "U+000A" in why[10]
        assert "not a valid number" in why[11]

    @pytest.mark.parametrize("header", [
        "", "name,phone\n", "user,phone,mode,lang,extra\n", "user,user,phone\n", "user\n"])
    def test_a_bad_header_is_refused_on_line_1(self, header: str) -> None:
        found = parse_csv(header + "alice,+12015550100\n", region="US")
        assert [r.line for r in found.refused] == [1]
        assert "header must be user,phone,mode,lang" in found.refused[0].why
        assert found.entries == []

    def test_broken_csv_is_refused(self) -> None:
        found = parse_csv('user,phone\n"alice,+12015550100\n', region="US")
        assert found.refused
        assert "not CSV" in found.refused[-1].why


class FakeDirectory:
    def __init__(self, *entries: DirectoryEntry) -> None:
        self.entries = {e.user: e for e in entries}
        self.asked: list[str] = []

    async def lookup(self, user: str) -> DirectoryEntry | None:
        self.asked.append(user)
        return self.entries.get(user)


BOB = DirectoryEntry(user="bob", phone="+12015550101x7", mode="pin", lang="fr")


class TestFallback:
    async def test_a_request_with_only_a_user_takes_the_directory_entry(self) -> None:
        directory = FakeDirectory(BOB)
        data = await resolve(request_fields(json.dumps({"id": RID, "user": "Bob"})), directory)
        req = parse_fields(data, requested_at=0, default_ttl_s=60)
        assert (req.user, req.number, req.extension, req.mode, req.lang) == (
            "bob", "+12015550101", "7", "pin", "fr")
        assert directory.asked == ["bob"]  # looked up by the normalised name

    async def test_the_request_s_mode_and_lang_win(self) -> None:
        data = await resolve({"id": RID, "user": "bob", "mode": "standard", "lang": "de"},
                             FakeDirectory(BOB))
        assert (data["phone"], data["mode"], data["lang"]) == ("+12015550101x7", "standard",
                                                               "de")

    async def test_a_request_with_a_phone_is_not_looked_up(self) -> None:
        directory = FakeDirectory(BOB)
        data = {"id": RID, "user": "bob", "phone": "+12015550199"}
        assert await resolve(data, directory) == data
        assert directory.asked == []

    async def test_a_malformed_phone_stays_invalid_phone(self) -> None:
        data = await resolve({"id": RID, "user": "bob", "phone": "12"}, FakeDirectory(BOB))
        with pytest.raises(RequestError) as ei:
            parse_fields(data, requested_at=0, default_ttl_s=60)
        assert ei.value.detail == "invalid_phone"

    @pytest.mark.parametrize("directory", [FakeDirectory(BOB), None])
    async def test_an_unknown_user_is_unknown_user(
        self, directory: FakeDirectory | None
    ) -> None:
        with pytest.raises(RequestError) as ei:
            await resolve({"id": RID, "user": "mallory"}, directory)
        assert ei.value.detail == "unknown_user"

    async def test_a_bad_user_is_left_to_the_parser(self) -> None:
        data = await resolve({"id": RID, "user": ""}, FakeDirectory(BOB))
        with pytest.raises(RequestError) as ei:
            parse_fields(data, requested_at=0, default_ttl_s=60)
        assert ei.value.detail == "invalid_user"

    def test_parse_request_still_needs_a_phone(self) -> None:
        with pytest.raises(RequestError) as ei:
            parse_request(json.dumps({"id": RID, "user": "bob"}), requested_at=0,
                          default_ttl_s=60)
        assert ei.value.detail == "invalid_phone"


class TestChainedDirectory:
    async def test_the_first_source_that_knows_the_user_answers(self) -> None:
        local = FakeDirectory(DirectoryEntry(user="bob", phone="+12015550101"))
        ldap = FakeDirectory(BOB, DirectoryEntry(user="carol", phone="+12015550103",
                                                 source="ldap"))
        chained = ChainedDirectory(local, ldap)
        bob = await chained.lookup("bob")
        assert bob is not None
        assert bob.phone == "+12015550101"
        assert ldap.asked == []  # found locally: LDAP is not asked
        carol = await chained.lookup("carol")
        assert carol is not None
        assert carol.source == "ldap"
        assert await chained.lookup("nobody") is None


class TestLdapFilter:
    @pytest.mark.parametrize(("user", "expected"), [
        ("alice", "(uid=alice)"),
        ("*", r"(uid=\2A)"),  # not "any user"
        ("a)(uid=*", r"(uid=a\29\28uid=\2A)"),  # no second clause
        ("x\\y", r"(uid=x\5Cy)"),
        ("élodie", "(uid=élodie)"),  # UTF-8 is a valid filter value
    ])
    def test_the_user_is_escaped(self, user: str, expected: str) -> None:
        assert user_filter("(uid={user})", user) == expected

    def test_every_placeholder_is_filled(self) -> None:
        assert user_filter("(|(uid={user})(mail={user}))", "a*") == r"(|(uid=a\2A)(mail=a\2A))"


LDAP = {"CALLMFA_LDAP_URL": "ldap://127.0.0.1:389",
        "CALLMFA_LDAP_BASE_DN": "ou=people,dc=example,dc=com"}


class TestLdapSettings:

    def test_defaults(self) -> None:
        s = Settings.from_env(LDAP)
        assert s.ldap_attributes == ("mobile", "telephoneNumber")
        assert s.ldap_user_filter == "(uid={user})"

    def test_the_bind_password_comes_from_a_file_and_is_not_shown(
        self, tmp_path: Path
    ) -> None:
        secret = tmp_path / "bind"
        secret.write_text("s3cret-bind\n")
        s = Settings.from_env({**LDAP, "CALLMFA_LDAP_BIND_PASSWORD_FILE": str(secret)})
        assert s.ldap_bind_password == "s3cret-bind"
        assert "s3cret" not in repr(s)

    @pytest.mark.parametrize(("extra", "why"), [
        ({"CALLMFA_LDAP_URL": "http://x"}, "CALLMFA_LDAP_URL must be"),
        ({"CALLMFA_LDAP_BASE_DN": ""}, "CALLMFA_LDAP_BASE_DN is needed"),
        ({"CALLMFA_LDAP_USER_FILTER": "uid={user}"}, "CALLMFA_LDAP_USER_FILTER"),
        ({"CALLMFA_LDAP_USER_FILTER": "(uid=alice)"}, "CALLMFA_LDAP_USER_FILTER"),
        ({"CALLMFA_LDAP_PHONE_ATTRIBUTES": ","}, "CALLMFA_LDAP_PHONE_ATTRIBUTES"),
        ({"CALLMFA_LDAP_PHONE_ATTRIBUTES": "mobile;x"}, "CALLMFA_LDAP_PHONE_ATTRIBUTES"),
        ({"CALLMFA_LDAP_TIMEOUT_S": "0"}, "CALLMFA_LDAP_TIMEOUT_S"),
    ])
    def test_bad_settings_are_refused(self, extra: dict[str, str], why: str) -> None:
        with pytest.raises(SettingsError, match=why):
            Settings.from_env({**LDAP, **extra})


class TestLdapCache:
    def directory(self, ttl_s: str) -> tuple[LdapDirectory, list[str]]:
        d = LdapDirectory(Settings.from_env({**LDAP,
                                             "CALLMFA_LDAP_CACHE_TTL_S": ttl_s}))
        searched: list[str] = []

        async def search(user: str) -> tuple[str, dict[str, list[str]]] | None:
            searched.append(user)
            if user == "nobody":
                return None
            return f"uid={user}", {"mobile": ["not a number"],
                                   "telephoneNumber": ["(201) 555-0100"]}

        d._search = search  # type: ignore[method-assign]
        return d, searched

    async def test_answers_are_cached_found_or_not(self) -> None:
        d, searched = self.directory("300")
        for _ in range(3):
            alice = await d.lookup("alice")
            assert await d.lookup("nobody") is None
        assert alice == DirectoryEntry(user="alice", phone="+12015550100", source="ldap")
        assert searched == ["alice", "nobody"]

    async def test_ttl_zero_caches_nothing(self) -> None:
        d, searched = self.directory("0")
        await d.lookup("alice")
        await d.lookup("alice")
        assert searched == ["alice", "alice"]

    async def test_an_empty_password_is_false_without_a_bind(self) -> None:
        d, searched = self.directory("300")
        assert await d.check_password("alice", "") is False
        assert searched == []  # not even searched
