"""One frozen settings object, loaded once from ``CALLMFA_*`` environment variables."""

from __future__ import annotations

import base64
import dataclasses
import ipaddress
import os
import re
import socket
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .domain.policy import parse_number_types, parse_prefixes, parse_regions
from .domain.request import MAX_EXPIRES_IN_S
from .domain.webhooks import (
    SECURITY_TYPES,
    UrlError,
    check_url,
    is_loopback,
    parse_allowed_urls,
)
from .exceptions import SettingsError

ENV_PREFIX = "CALLMFA_"
MIN_SIGNING_KEY_BYTES = 32
# Secrets that may instead come from the file named by CALLMFA_<NAME>_FILE.
MIN_PEPPER_BYTES = 32
SECRETS = ("ami_secret", "signing_key", "signing_key_previous", "pin_pepper",
           "ldap_bind_password", "webhook_secret", "smtp_password", "provider_privacyidea_token",
           "provider_authentik_token", "provider_okta_token", "provider_linotp_token",
           "radius_upstream_secret", "redis_sentinel_password")
# What `callmfa serve` can run (CALLMFA_ROLES).
ROLES = frozenset({"originator", "agi", "api", "radius", "webhooks"})
# The file the systemd unit names in CALLMFA_CONFIG_FILE; the command line reads it too
# when CALLMFA_CONFIG_FILE is unset, so that `callmfa check` on the host gets serve's settings.
DEFAULT_CONFIG_FILE = "/etc/callmfa/callmfa.conf"


def _default_consumer() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything callmfa can be told, with the defaults a single-PBX install wants.

    Each field is read from ``CALLMFA_<FIELD NAME IN UPPER CASE>``; the secrets
    (``ami_secret``, ``signing_key``, ``pin_pepper``, ``ldap_bind_password``,
    ``radius_upstream_secret``) may instead come from the file named by ``CALLMFA_<NAME>_FILE``.
    """

    redis_url: str = field(
        default="redis://127.0.0.1:6379/0",
        metadata={"doc": "Redis URL (redis:// or rediss:// for TLS; user:password@ for ACL)."},
    )
    # Redis Sentinel (docs/scaling.md): the primary's address comes from the Sentinels, the
    # data nodes' user, password, database and TLS options from CALLMFA_REDIS_URL.
    redis_sentinels: str = field(
        default="",
        metadata={"doc": "Redis Sentinels, host:port,host:port,...: the primary is found "
                         "through them and followed across failovers (CALLMFA_REDIS_URL then "
                         "gives only the data nodes' user, password, database and TLS)."},
    )
    redis_sentinel_service: str = field(
        default="callmfa",
        metadata={"doc": "The Sentinels' name for callmfa's primary (sentinel monitor NAME)."},
    )
    redis_sentinel_user: str = field(
        default="", metadata={"doc": "ACL user on the Sentinels (empty: default user)."}
    )
    redis_sentinel_password: str = field(
        default="",
        repr=False,
        metadata={"doc": "Password on the Sentinels (sentinel requirepass or the ACL user's); "
                         "or CALLMFA_REDIS_SENTINEL_PASSWORD_FILE."},
    )
    redis_sentinel_tls: int = field(
        default=0,
        metadata={"doc": "1: TLS to the Sentinels, with the CA and client certificate named "
                         "in CALLMFA_REDIS_URL's query (ssl_ca_certs, ssl_certfile, "
                         "ssl_keyfile)."},
    )
    redis_failover_s: float = field(
        default=30.0,
        metadata={"doc": "How long a Redis command is retried through a failover or restart "
                         "(Sentinel's down-after-milliseconds plus the failover itself)."},
    )
    redis_wait_replicas: int = field(
        default=0,
        metadata={"doc": "Replicas that must hold the request, the call claim and the outcome "
                         "before callmfa goes on (WAIT N after those writes); 0: no WAIT. "
                         "1 with Sentinel."},
    )
    redis_wait_timeout_ms: int = field(
        default=500,
        metadata={"doc": "Longest WAIT for those replicas; a write that was not replicated "
                         "in time is logged and counted, and callmfa goes on (the primary "
                         "has it)."},
    )
    ami_host: str = field(default="127.0.0.1", metadata={"doc": "Asterisk Manager host."})
    ami_port: int = field(default=5038, metadata={"doc": "Asterisk Manager port."})
    ami_endpoints: str = field(
        default="",
        metadata={"doc": "Several Asterisk servers: host:port,host:port (same account); "
                         "empty means AMI_HOST:AMI_PORT."},
    )
    ami_user: str = field(default="callmfa", metadata={"doc": "AMI account (manager.conf)."})
    ami_secret: str = field(
        default="",
        repr=False,
        metadata={"doc": "AMI secret; or CALLMFA_AMI_SECRET_FILE names a file holding it."},
    )
    agi_host: str = field(default="127.0.0.1", metadata={"doc": "FastAGI listen address."})
    agi_port: int = field(default=4573, metadata={"doc": "FastAGI listen port."})
    agi_url: str = field(
        default="agi://127.0.0.1:4573/verify",
        metadata={"doc": "The AGI URL the dialplan runs (passed as CALLMFA_AGI)."},
    )
    dial_template: str = field(
        default="PJSIP/{number}@trunk",
        metadata={"doc": "Dial string; {number} is +E.164, {digits} the same without '+'."},
    )
    caller_id: str = field(
        default="", metadata={"doc": 'Caller ID shown to the user, e.g. "Sign-in" <+15550000>.'}
    )
    context: str = field(default="callmfa-verify", metadata={"doc": "Dialplan context."})
    asterisk_config_dir: str = field(
        default="/etc/asterisk",
        metadata={"doc": "Asterisk's configuration directory, when on this host: `callmfa "
                         "check` checks that manager_callmfa.conf (the AMI secret) is not "
                         "readable by others."},
    )
    ring_timeout_s: float = field(default=30.0, metadata={"doc": "How long the phone rings."})
    max_call_s: int = field(default=120, metadata={"doc": "Hard limit on an answered call."})
    max_in_flight: int = field(
        default=100, metadata={"doc": "Calls placed at once by this originator, at most."}
    )
    max_per_asterisk: int = field(
        default=100, metadata={"doc": "Calls placed at once through one Asterisk, at most."}
    )
    input_timeout_s: float = field(
        default=6.0, metadata={"doc": "Wait for a key after the prompt ends."}
    )
    max_attempts: int = field(default=3, metadata={"doc": "Prompts played before giving up."})
    request_ttl_s: int = field(
        default=120,
        metadata={"doc": "Deadline for requests that carry no expires_at (1 to 3600 s)."},
    )
    result_ttl_s: int = field(default=3600, metadata={"doc": "How long outcomes stay in Redis."})
    events_maxlen: int = field(default=100_000, metadata={"doc": "Approximate events cap."})
    connect_timeout_s: float = field(
        default=5.0, metadata={"doc": "AMI and Redis connect and login timeout."}
    )
    agi_header_timeout_s: float = field(
        default=5.0, metadata={"doc": "Time allowed for an AGI client to send its headers."}
    )
    agi_command_timeout_s: float = field(
        default=90.0, metadata={"doc": "Longest wait for a reply to one AGI command."}
    )
    agi_max_sessions: int = field(default=1000, metadata={"doc": "FastAGI sessions at once."})
    outcome_grace_s: float = field(
        default=3.0, metadata={"doc": "After hang-up, wait this long for the IVR's outcome."}
    )
    shutdown_grace_s: float = field(
        default=30.0, metadata={"doc": "On SIGTERM, how long in-flight calls may finish."}
    )
    lease_s: float = field(
        default=5.0,
        metadata={"doc": "Originator liveness lease; a dead one's requests are taken over "
                         "after this long."},
    )
    roles: str = field(
        default="originator,agi",
        metadata={"doc": "What `callmfa serve` runs, comma-separated: originator, agi, "
                  "api (the HTTP API), radius (the RADIUS front, docs/radius.md), webhooks "
                  "(only the webhook and alert sender, which also runs with the originator)."},
    )
    health_host: str = field(default="127.0.0.1", metadata={"doc": "/healthz listen address."})
    health_port: int = field(
        default=4580, metadata={"doc": "/healthz listen port (0: no HTTP endpoint)."}
    )
    consumer: str = field(
        default_factory=_default_consumer,
        metadata={"doc": "This originator's name in the consumer group (host-pid)."},
    )
    log_level: str = field(default="info", metadata={"doc": "debug, info, warning or error."})
    agi_mode: str = field(
        default="fastagi",
        metadata={"doc": "fastagi (callmfa serve runs the IVR) or classic (the Asterisk host "
                         "runs agi_scripts/callmfa-verify.agi): picks the context <CONTEXT> or "
                         "<CONTEXT>-classic."},
    )
    amd: str = field(
        default="on",
        metadata={"doc": "Answering-machine detection (Asterisk's AMD()) before the greeting: "
                         "on or off. MACHINE ends the call as machine_answered (unless it "
                         "heard only silence and a key: then the greeting asks again)."},
    )
    amd_initial_silence_ms: int = field(
        default=2500,
        metadata={"doc": "AMD(): silence before anyone speaks that makes MACHINE "
                         "(INITIALSILENCE). Lower decides sooner; a silent person who keys # "
                         "is asked again either way."},
    )
    amd_greeting_ms: int = field(
        default=1500,
        metadata={"doc": "AMD(): the longest greeting a person says; a longer one is a "
                         "voicemail (LONGGREETING). Lower catches voicemail sooner and takes "
                         "more long-winded people for machines."},
    )
    amd_total_ms: int = field(
        default=5000,
        metadata={"doc": "AMD(): how long detection may listen in all; then NOTSURE, which "
                         "is treated as a person."},
    )
    pin_lockout_after: int = field(
        default=3, metadata={"doc": "Denied PIN calls in a row that lock the user out."}
    )
    pin_lockout_s: float = field(
        default=900.0,
        metadata={"doc": "How long a PIN lockout lasts; 0: until `callmfa pin unlock`."},
    )
    pin_pepper: str = field(
        default="",
        repr=False,
        metadata={"doc": "HMAC-SHA256 key (at least 32 bytes) applied to PINs before scrypt, "
                  "kept outside Redis; or CALLMFA_PIN_PEPPER_FILE. Empty: PINs unpeppered "
                  "(warned)."},
    )
    prompt_override_dir: str = field(
        default="",
        metadata={"doc": "Directory ON THE ASTERISK HOST holding admin recordings "
                         "<lang>/<prompt id>.wav that replace callmfa's own prompts."},
    )
    event_loop: str = field(
        default="auto",
        metadata={"doc": "auto: uvloop when installed (a default dependency), else asyncio's; "
                         "or asyncio, or uvloop (an error when it is not installed)."},
    )
    metrics_host: str = field(
        default="127.0.0.1", metadata={"doc": "Prometheus endpoint address (/metrics, /healthz)."}
    )
    metrics_port: int = field(
        default=0, metadata={"doc": "Prometheus endpoint port; 0 serves no endpoint."}
    )
    http_max_connections: int = field(
        default=64,
        metadata={"doc": "Connections served at once by each /healthz and /metrics server; "
                  "more get 503 at once and are counted."},
    )
    # The HTTP API (role api; docs/openapi.yaml).
    api_host: str = field(default="127.0.0.1", metadata={"doc": "HTTP API listen address."})
    api_port: int = field(default=4581, metadata={"doc": "HTTP API listen port."})
    api_tls_cert: str = field(
        default="",
        metadata={"doc": "PEM certificate (chain) for the HTTP API; with CALLMFA_API_TLS_KEY it "
                  "serves HTTPS. Empty: plain HTTP (bind it to loopback behind a TLS proxy)."},
    )
    api_tls_key: str = field(
        default="", metadata={"doc": "PEM private key for CALLMFA_API_TLS_CERT."}
    )
    api_rate_per_min: int = field(
        default=600, metadata={"doc": "HTTP API requests per token in any minute; more get 429."}
    )
    api_idempotency_ttl_s: int = field(
        default=86400,
        metadata={"doc": "How long an Idempotency-Key is remembered (per token)."},
    )
    api_max_connections: int = field(
        default=1024,
        metadata={"doc": "Connections the HTTP API serves at once (long polls and event "
                  "streams hold one each); more get 503 at once and are counted."},
    )
    api_demo: str = field(
        default="off",
        metadata={"doc": "on: the live sign-in demo page at /demo on the API listener (users "
                  "demo-* only, with a server-side identity; never on a public listener)."},
    )
    # The user directory's optional LDAP source (docs/directory.md).
    ldap_url: str = field(
        default="",
        metadata={"doc": "LDAP server for the user directory (ldap://host:389 or "
                  "ldaps://host:636); empty: only `callmfa user` entries."},
    )
    ldap_bind_dn: str = field(
        default="",
        metadata={"doc": "DN the service binds as to search users (empty: anonymous)."},
    )
    ldap_bind_password: str = field(
        default="",
        repr=False,
        metadata={"doc": "Password of CALLMFA_LDAP_BIND_DN; or CALLMFA_LDAP_BIND_PASSWORD_FILE "
                  "names a file holding it."},
    )
    ldap_base_dn: str = field(
        default="", metadata={"doc": "Where users are searched (subtree), e.g. "
                              "ou=people,dc=example,dc=com."},
    )
    ldap_user_filter: str = field(
        default="(uid={user})",
        metadata={"doc": "Search filter; {user} is the normalised user name, escaped (RFC "
                  "4515), e.g. (&(objectClass=person)(sAMAccountName={user}))."},
    )
    ldap_phone_attributes: str = field(
        default="mobile,telephoneNumber",
        metadata={"doc": "Attributes holding the phone, in order: the first present with a "
                  "valid number wins."},
    )
    ldap_cache_ttl_s: float = field(
        default=300.0,
        metadata={"doc": "How long an LDAP answer (found or not) is kept in the process; 0: "
                  "not cached."},
    )
    ldap_timeout_s: float = field(
        default=5.0,
        metadata={"doc": "Longest wait for the LDAP server: connect and bind, then each search."},
    )
    # Security and anti-fraud (docs/security.md).
    allowed_prefixes: str = field(
        default="+1",
        metadata={"doc": "E.164 prefixes that may be dialled, comma-separated: your own "
                  "country, e.g. +44 or +33,+32 (default +1, US/Canada)."},
    )
    denied_prefixes: str = field(
        default="",
        metadata={"doc": "Prefixes never dialled, added to the shipped premium-rate and "
                  "high-risk list; the longest matching prefix decides, allow wins a tie."},
    )
    allowed_regions: str = field(
        default="US,CA",
        metadata={"doc": "Regions (ISO 3166 codes, as libphonenumber assigns them; 001: "
                  "non-geographic; *: any) whose valid numbers may be dialled: set them with "
                  "CALLMFA_ALLOWED_PREFIXES, e.g. +44 with GB (default US,CA for +1)."},
    )
    denied_number_types: str = field(
        default="PREMIUM_RATE,SHARED_COST,UAN,VOIP",
        metadata={"doc": "Number types never dialled (libphonenumber's: PREMIUM_RATE, "
                  "SHARED_COST, UAN, VOIP, PERSONAL_NUMBER, PAGER, TOLL_FREE, ...); empty: "
                  "none."},
    )
    throttle_user_cooldown_s: int = field(
        default=60, metadata={"doc": "Seconds between two calls to one user (0: off)."}
    )
    throttle_number_cooldown_s: int = field(
        default=60, metadata={"doc": "Seconds between two calls to one number (0: off)."}
    )
    throttle_user_per_hour: int = field(
        default=5, metadata={"doc": "Calls per user in any hour (0: no cap)."}
    )
    throttle_number_per_hour: int = field(
        default=5, metadata={"doc": "Calls per phone number in any hour (0: no cap)."}
    )
    throttle_global_per_hour: int = field(
        default=500, metadata={"doc": "Calls in all in any hour (0: no cap)."}
    )
    fraud_block_s: int = field(
        default=90 * 86400,
        metadata={"doc": "How long 0# (fraud_reported) blocks the user (default 90 days)."},
    )
    # Webhooks and alert e-mails (docs/webhooks.md).
    webhook_url: str = field(
        default="",
        metadata={"doc": "Where every outcome is POSTed (a request's callback_url wins), "
                  "signed as Standard Webhooks: https://..., or http:// to a loopback host."},
    )
    security_webhook_url: str = field(
        default="",
        metadata={"doc": "Where security events (fraud report, block, bypass used, PIN "
                  "lockout) are POSTed; empty: CALLMFA_WEBHOOK_URL."},
    )
    webhook_allowed_urls: str = field(
        default="",
        metadata={"doc": "URL prefixes a request's callback_url must fall under, "
                  "comma-separated (https://hooks.example.com/mfa/, https://*.example.com/); "
                  "empty: callback_url is refused."},
    )
    webhook_secret: str = field(
        default="",
        repr=False,
        metadata={"doc": "The Standard Webhooks signing secret, whsec_<base64 of 24 to 64 "
                  "bytes>; or CALLMFA_WEBHOOK_SECRET_FILE. Required when a webhook URL is set, in "
                  "a process that sends them (roles originator or webhooks)."},
    )
    webhook_timeout_s: float = field(
        default=10.0,
        metadata={"doc": "Timeout of one webhook POST or alert e-mail, connecting included."},
    )
    webhook_backoff_base_s: float = field(
        default=5.0,
        metadata={"doc": "The first retry's delay; each further one doubles (jittered), up to "
                  "CALLMFA_WEBHOOK_BACKOFF_MAX_S."},
    )
    webhook_backoff_max_s: float = field(
        default=3600.0, metadata={"doc": "The longest delay between two delivery attempts."}
    )
    webhook_give_up_s: float = field(
        default=86400.0,
        metadata={"doc": "How long a webhook or alert is retried before it is dead-lettered "
                  "(callmfa:webhooks:dead)."},
    )
    webhook_concurrency: int = field(
        default=16, metadata={"doc": "Deliveries in flight at once per `callmfa serve` (alert "
                                    "e-mails: a quarter of them, at least 1)."}
    )
    alert_email: str = field(
        default="",
        metadata={"doc": "Who gets the fraud alert e-mails, comma-separated; empty: none."},
    )
    alert_events: str = field(
        default="fraud_reported",
        metadata={"doc": "Which security events are e-mailed: fraud_reported, pin_locked_out, "
                  "blocked, bypass_used (comma-separated)."},
    )
    smtp_host: str = field(default="localhost", metadata={"doc": "SMTP server for alerts."})
    smtp_port: int = field(
        default=587, metadata={"doc": "SMTP port (587 with STARTTLS, 465 with tls, 25)."}
    )
    smtp_starttls: str = field(
        default="on",
        metadata={"doc": "on (STARTTLS, required), tls (TLS from the start, port 465) or off "
                  "(plain: with a user and password, only to a relay on this host)."},
    )
    smtp_user: str = field(
        default="", metadata={"doc": "SMTP user name; empty: no authentication."}
    )
    smtp_password: str = field(
        default="",
        repr=False,
        metadata={"doc": "SMTP password; or CALLMFA_SMTP_PASSWORD_FILE."},
    )
    smtp_from: str = field(
        default="callmfa@localhost", metadata={"doc": "The alert e-mails' From address."}
    )
    signing_key: str = field(
        default="",
        repr=False,
        metadata={"doc": "HMAC-SHA256 key that signs outcomes (field sig), at least 32 bytes; "
                  "or CALLMFA_SIGNING_KEY_FILE. Required by `callmfa serve`."},
    )
    signing_key_previous: str = field(
        default="",
        repr=False,
        metadata={"doc": "While the signing key is rotated: the key before it, whose outcomes "
                  "are still accepted (docs/security.md); or CALLMFA_SIGNING_KEY_PREVIOUS_FILE."},
    )
    insecure_unsigned: int = field(
        default=0,
        metadata={"doc": "1: let `callmfa serve` run without CALLMFA_SIGNING_KEY, publishing "
                  "unsigned outcomes that anyone with Redis write access can forge (warned "
                  "at start-up and by `callmfa check`)."},
    )
    agi_allowed_peers: str = field(
        default="127.0.0.1",
        metadata={"doc": "Addresses or networks that may connect to FastAGI, "
                  "comma-separated (your Asterisk servers)."},
    )
    provider_privacyidea_token: str = field(
        default="",
        repr=False,
        metadata={"doc": "privacyIDEA's HTTP SMS gateway endpoint: the password of its "
                  "USERNAME/PASSWORD (Basic) or a Bearer token; or "
                  "CALLMFA_PROVIDER_PRIVACYIDEA_TOKEN_FILE. Empty: the endpoint refuses all."},
    )
    provider_privacyidea_phone_param: str = field(
        default="to",
        metadata={"doc": "privacyIDEA: the option (parameter) name that carries {phone}."},
    )
    provider_privacyidea_text_param: str = field(
        default="text",
        metadata={"doc": "privacyIDEA: the option (parameter) name that carries {otp} (the "
                  "code, or a text holding it)."},
    )
    provider_authentik_token: str = field(
        default="",
        repr=False,
        metadata={"doc": "authentik's generic SMS provider endpoint: its Bearer token, or the "
                  "password of its Basic auth; or CALLMFA_PROVIDER_AUTHENTIK_TOKEN_FILE. "
                  "Empty: the endpoint refuses all."},
    )
    provider_okta_token: str = field(
        default="",
        repr=False,
        metadata={"doc": "Okta's telephony inline hook: the value of its authScheme header; "
                  "or CALLMFA_PROVIDER_OKTA_TOKEN_FILE. Empty: the endpoint refuses all."},
    )
    provider_okta_auth_header: str = field(
        default="Authorization",
        metadata={"doc": "Okta's telephony inline hook: the authScheme header's name (key)."},
    )
    provider_linotp_token: str = field(
        default="",
        repr=False,
        metadata={"doc": "LinOTP's custom voice provider endpoint: the password of a Basic "
                  "auth in its server_url, or its twilioConfig authToken; or "
                  "CALLMFA_PROVIDER_LINOTP_TOKEN_FILE. Empty: the endpoint refuses all."},
    )
    provider_region: str = field(
        default="US",
        metadata={"doc": "Provider endpoints: the region (ISO 3166) of a phone number sent "
                  "without + and country code."},
    )
    provider_lang: str = field(
        default="en",
        metadata={"doc": "Provider endpoints: the prompt language when the system sends none."},
    )
    provider_accept_s: float = field(
        default=1.5,
        metadata={"doc": "Provider endpoints: how long a request may wait to be taken for a "
                  "call; not taken by then, it expires uncalled and the reply is a failure "
                  "(Okta waits 3 s in all)."},
    )

    # Microsoft Entra's External Authentication Method (docs/entra.md).
    entra_issuer: str = field(
        default="",
        metadata={"doc": "Entra EAM: callmfa's issuer URL (https://host/path), character for "
                  "character as in Entra's configuration; the endpoints are under its path. "
                  "Empty: no Entra endpoints."},
    )
    entra_client_id: str = field(
        default="",
        metadata={"doc": "Entra EAM: the client id Entra sends (the EAM's client id); the "
                  "id_token's aud."},
    )
    entra_signing_key_file: str = field(
        default="",
        metadata={"doc": "Entra EAM: PEM file of callmfa's RSA signing key and its "
                  "self-signed certificate (x5c); the first pair signs, later pairs are "
                  "only published."},
    )
    entra_discovery_url: str = field(
        default="https://login.microsoftonline.com/common/v2.0/.well-known/openid-configuration",
        metadata={"doc": "Entra EAM: Entra's discovery document, whose jwks_uri holds the "
                  "keys of id_token_hint."},
    )
    entra_hint_audience: str = field(
        default="",
        metadata={"doc": "Entra EAM: the aud id_token_hint must carry; empty: "
                  "CALLMFA_ENTRA_CLIENT_ID; off: not checked (docs and samples disagree)."},
    )
    entra_tenants: str = field(
        default="",
        metadata={"doc": "Entra EAM: the tenant ids (tid) served, comma-separated; empty: any."},
    )
    entra_redirect_uris: str = field(
        default="https://login.microsoftonline.com/common/federation/externalauthprovider,"
                "https://login.microsoftonline.us/common/federation/externalauthprovider,"
                "https://login.partner.microsoftonline.cn/common/federation/externalauthprovider",
        metadata={"doc": "Entra EAM: the redirect_uri values answered, comma-separated "
                  "(the public cloud and the sovereign clouds)."},
    )

    # The RADIUS front (docs/radius.md).
    radius_host: str = field(default="127.0.0.1", metadata={"doc": "RADIUS listen address (UDP)."})
    radius_port: int = field(default=1812, metadata={"doc": "RADIUS listen port (UDP)."})
    radius_clients_file: str = field(
        default="",
        metadata={"doc": "The NAS clients, one a line: address or CIDR, secret or "
                  "file:/path, optional name, require_message_authenticator=yes|no "
                  "(docs/radius.md). Required by the radius role."},
    )
    radius_password: str = field(
        default="none",
        metadata={"doc": "First factor checked by the RADIUS front: none (the NAS did), ldap "
                  "(a bind as the user) or radius (CALLMFA_RADIUS_UPSTREAM). PAP only."},
    )
    radius_reply_by_s: float = field(
        default=55.0,
        metadata={"doc": "The RADIUS reply goes out within this many seconds; past it, an "
                  "Access-Reject \"not answered in time\" (keep it under the NAS timeout)."},
    )
    radius_upstream: str = field(
        default="",
        metadata={"doc": "host:port of the RADIUS server that checks passwords when "
                  "CALLMFA_RADIUS_PASSWORD=radius (NPS, FreeRADIUS)."},
    )
    radius_upstream_secret: str = field(
        default="",
        repr=False,
        metadata={"doc": "Shared secret with CALLMFA_RADIUS_UPSTREAM; or "
                  "CALLMFA_RADIUS_UPSTREAM_SECRET_FILE."},
    )
    radius_upstream_timeout_s: float = field(
        default=5.0,
        metadata={"doc": "How long the upstream RADIUS server has to answer (one try and "
                  "one retransmission, each this long)."},
    )
    org_name: str = field(
        default="your organisation",
        metadata={"doc": "Who calls, as users are told: \"Answer the call from <org> and key "
                  "37, then #\" (RADIUS number match)."},
    )

    def __post_init__(self) -> None:
        if not 0.1 <= self.provider_accept_s <= 10:
            raise SettingsError("CALLMFA_PROVIDER_ACCEPT_S must be 0.1 to 10 (seconds)")
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9-]{0,63}", self.provider_okta_auth_header):
            raise SettingsError("CALLMFA_PROVIDER_OKTA_AUTH_HEADER must be an HTTP header name")
        for name in ("ami_user", "ami_secret", "caller_id", "dial_template", "context", "agi_url"):
            value = getattr(self, name)
            # These reach AMI headers: a CR or LF would inject headers.
            if any(c in value for c in "\r\n\0"):
                raise SettingsError(f"CALLMFA_{name.upper()} must not contain CR, LF or NUL")
        if self.agi_mode not in ("fastagi", "classic"):
            raise SettingsError("CALLMFA_AGI_MODE must be fastagi or classic")
        if self.amd not in ("on", "off"):
            raise SettingsError("CALLMFA_AMD must be on or off")
        for name in ("amd_initial_silence_ms", "amd_greeting_ms", "amd_total_ms"):
            if not 100 <= getattr(self, name) <= 30_000:
                raise SettingsError(f"CALLMFA_{name.upper()} must be 100 to 30000 (ms)")
        if self.prompt_override_dir and not re.fullmatch(r"/[A-Za-z0-9_./-]*[^/]",
                                                         self.prompt_override_dir):
            raise SettingsError(
                "CALLMFA_PROMPT_OVERRIDE_DIR must be an absolute path of letters, digits, _ . - /"
            )
        self._check_redis_url()
        for name in ("agi_port", "health_port", "metrics_port", "api_port"):
            if not 0 <= getattr(self, name) < 65536:
                raise SettingsError(f"CALLMFA_{name.upper()} must be 0 to 65535")
        if self.event_loop not in ("auto", "asyncio", "uvloop"):
            raise SettingsError("CALLMFA_EVENT_LOOP must be auto, asyncio or uvloop")
        if "{number}" not in self.dial_template and "{digits}" not in self.dial_template:
            raise SettingsError("CALLMFA_DIAL_TEMPLATE must contain {number} or {digits}")
        if not set(self.role_set) <= ROLES or not self.role_set:
            raise SettingsError("CALLMFA_ROLES must name one or more of "
                                + ", ".join(sorted(ROLES)))
        if self.api_demo not in ("on", "off"):
            raise SettingsError("CALLMFA_API_DEMO must be on or off")
        if self.entra_issuer:
            self._check_entra()
        if bool(self.api_tls_cert) != bool(self.api_tls_key):
            raise SettingsError("CALLMFA_API_TLS_CERT and CALLMFA_API_TLS_KEY go together")
        for host, port in self.asterisks:
            if not host or not 0 < port < 65536:
                raise SettingsError(f"CALLMFA_AMI_ENDPOINTS: bad endpoint {host}:{port}")
        for name in ("max_in_flight", "max_attempts", "agi_max_sessions", "max_call_s",
                     "max_per_asterisk", "pin_lockout_after", "http_max_connections",
                     "api_rate_per_min", "api_idempotency_ttl_s", "api_max_connections"):
            if getattr(self, name) < 1:
                raise SettingsError(f"CALLMFA_{name.upper()} must be at least 1")
        if not 1 <= self.request_ttl_s <= MAX_EXPIRES_IN_S:
            raise SettingsError(f"CALLMFA_REQUEST_TTL_S must be 1 to {MAX_EXPIRES_IN_S} (s)")
        self._check_agi_url()
        self._check_security()
        self._check_ldap()
        self._check_radius()

    def _check_redis_url(self) -> None:
        # Checked here, not at the first connection, where redis-py's ValueError was a
        # traceback; the message leaves the URL out (it may hold the password).
        try:
            url = urlsplit(self.redis_url)
            url.port  # noqa: B018 - parsed for its errors
            scheme = url.scheme
        except ValueError:  # a port that is no number or out of range, a broken [IPv6] host
            scheme = ""
        if scheme not in ("redis", "rediss", "unix"):
            raise SettingsError("CALLMFA_REDIS_URL must be redis://[user:password@]host[:port]"
                                "/db, rediss://... (TLS) or unix:///path")

    def _check_agi_url(self) -> None:
        # A port that is no number failed only when the first call was answered.
        if agi_address(self.agi_url) is None:
            raise SettingsError("CALLMFA_AGI_URL must be agi://host[:port]/path (or hagi://)")

    def _check_entra(self) -> None:
        if not re.fullmatch(r"https://[^\s/?#]+(/[^\s?#]*)?", self.entra_issuer):
            raise SettingsError("CALLMFA_ENTRA_ISSUER must be an https:// URL without query")
        if not self.entra_client_id or not self.entra_signing_key_file:
            raise SettingsError("CALLMFA_ENTRA_ISSUER needs CALLMFA_ENTRA_CLIENT_ID and "
                                "CALLMFA_ENTRA_SIGNING_KEY_FILE")
        if not self.entra_redirect_uri_set:
            raise SettingsError("CALLMFA_ENTRA_REDIRECT_URIS names no URI")

    @property
    def entra_redirect_uri_set(self) -> frozenset[str]:
        """``entra_redirect_uris`` as a set."""
        return frozenset(u.strip() for u in self.entra_redirect_uris.split(",") if u.strip())

    @property
    def entra_tenant_set(self) -> frozenset[str]:
        """``entra_tenants`` as a set of lower-case ids; empty: any tenant."""
        return frozenset(t.strip().lower() for t in self.entra_tenants.split(",") if t.strip())

    def _check_ldap(self) -> None:
        if not self.ldap_url:
            return
        if not re.fullmatch(r"ldaps?://[^\s/]+/?", self.ldap_url):
            raise SettingsError("CALLMFA_LDAP_URL must be ldap://host[:port] or "
                                "ldaps://host[:port]")
        if not self.ldap_base_dn:
            raise SettingsError("CALLMFA_LDAP_BASE_DN is needed with CALLMFA_LDAP_URL")
        f = self.ldap_user_filter
        if "{user}" not in f or not (f.startswith("(") and f.endswith(")")):
            raise SettingsError("CALLMFA_LDAP_USER_FILTER must be a filter in parentheses "
                                "holding {user}, e.g. (uid={user})")
        if not self.ldap_attributes or not all(re.fullmatch(r"[A-Za-z][A-Za-z0-9-]*", a)
                                               for a in self.ldap_attributes):
            raise SettingsError("CALLMFA_LDAP_PHONE_ATTRIBUTES must name attributes, e.g. "
                                "mobile,telephoneNumber")
        if self.ldap_cache_ttl_s < 0 or self.ldap_timeout_s <= 0:
            raise SettingsError("CALLMFA_LDAP_CACHE_TTL_S must not be negative and "
                                "CALLMFA_LDAP_TIMEOUT_S must be positive")

    @property
    def ldap_attributes(self) -> tuple[str, ...]:
        """``ldap_phone_attributes`` as a tuple, in order."""
        return tuple(a.strip() for a in self.ldap_phone_attributes.split(",") if a.strip())

    def _check_radius(self) -> None:
        if self.radius_password not in ("none", "ldap", "radius"):
            raise SettingsError("CALLMFA_RADIUS_PASSWORD must be none, ldap or radius")
        if not 0 <= self.radius_port < 65536:
            raise SettingsError("CALLMFA_RADIUS_PORT must be 0 to 65535")
        if not 0 < self.radius_reply_by_s <= 600:
            raise SettingsError("CALLMFA_RADIUS_REPLY_BY_S must be over 0 and at most 600 (s)")
        if not 0 < self.radius_upstream_timeout_s <= 60:
            raise SettingsError("CALLMFA_RADIUS_UPSTREAM_TIMEOUT_S must be over 0 and at most 60")
        if any(c in self.org_name for c in "\r\n\0") or len(self.org_name.encode()) > 100:
            raise SettingsError("CALLMFA_ORG_NAME must be one line of at most 100 bytes")
        if self.radius_password == "radius":  # noqa: S105 - a mode, not a password
            if not self.radius_upstream or not self.radius_upstream_secret:
                raise SettingsError("CALLMFA_RADIUS_PASSWORD=radius needs CALLMFA_RADIUS_UPSTREAM "
                                    "(host:port) and CALLMFA_RADIUS_UPSTREAM_SECRET (or _FILE)")
            self.radius_upstream_address()

    def radius_upstream_address(self) -> tuple[str, int]:
        """``radius_upstream`` as (host, port); port 1812 when none is given."""
        host, sep, port = self.radius_upstream.strip().rpartition(":")
        if not sep:
            host, port = port, "1812"
        try:
            number = int(port)
        except ValueError:
            number = -1
        if not host or not 0 < number < 65536:
            raise SettingsError(f"CALLMFA_RADIUS_UPSTREAM: bad address {self.radius_upstream!r} "
                                "(host:port)")
        return host.strip("[]"), number

    def _check_security(self) -> None:
        if self.pin_pepper and len(self.pin_pepper.encode()) < MIN_PEPPER_BYTES:
            raise SettingsError(f"CALLMFA_PIN_PEPPER must be at least {MIN_PEPPER_BYTES} bytes "
                                "(e.g. head -c 32 /dev/urandom | base64)")
        for name in ("allowed_prefixes", "denied_prefixes"):
            try:
                parse_prefixes(getattr(self, name))
            except ValueError as e:
                raise SettingsError(f"CALLMFA_{name.upper()}: {e}") from None
        if not parse_prefixes(self.allowed_prefixes):
            raise SettingsError("CALLMFA_ALLOWED_PREFIXES is empty: no number could be called")
        for name, parse in (("allowed_regions", parse_regions),
                            ("denied_number_types", parse_number_types)):
            try:
                parse(getattr(self, name))
            except ValueError as e:
                raise SettingsError(f"CALLMFA_{name.upper()}: {e}") from None
        for name in ("throttle_user_cooldown_s", "throttle_number_cooldown_s",
                     "throttle_user_per_hour", "throttle_number_per_hour",
                     "throttle_global_per_hour", "fraud_block_s"):
            if getattr(self, name) < 0:
                raise SettingsError(f"CALLMFA_{name.upper()} must not be negative")
        try:
            self.agi_peer_networks()
        except ValueError as e:
            raise SettingsError(f"CALLMFA_AGI_ALLOWED_PEERS: {e}") from None
        if self.insecure_unsigned not in (0, 1):
            raise SettingsError("CALLMFA_INSECURE_UNSIGNED must be 0 or 1")
        self._check_webhooks()
        self._check_sentinel()

    def _check_webhooks(self) -> None:
        for name in ("webhook_url", "security_webhook_url"):
            if getattr(self, name):
                try:
                    check_url(getattr(self, name))
                except UrlError as e:
                    raise SettingsError(f"CALLMFA_{name.upper()}: {e}") from None
        try:
            parse_allowed_urls(self.webhook_allowed_urls)
        except UrlError as e:
            raise SettingsError(f"CALLMFA_WEBHOOK_ALLOWED_URLS: {e}") from None
        # Only a sender signs (the classic AGI script, role agi, queues outcomes unsigned).
        sends = bool(self.role_set & {"originator", "webhooks"})
        if self.webhooks_configured and (sends or self.webhook_secret):
            try:
                secret = base64.b64decode(self.webhook_secret.removeprefix("whsec_"),
                                          validate=True)
            except ValueError:
                secret = b""
            if not self.webhook_secret.startswith("whsec_") or not 24 <= len(secret) <= 64:
                raise SettingsError(
                    "CALLMFA_WEBHOOK_SECRET must be whsec_ and the base64 of 24 to 64 random "
                    "bytes (e.g. echo whsec_$(head -c 32 /dev/urandom | base64)); it is needed "
                    "as soon as a webhook URL is set (in a process with the originator or "
                    "webhooks role)")
        for name in ("webhook_timeout_s", "webhook_backoff_base_s", "webhook_backoff_max_s",
                     "webhook_give_up_s"):
            if getattr(self, name) <= 0:
                raise SettingsError(f"CALLMFA_{name.upper()} must be more than 0")
        if self.webhook_concurrency < 1:
            raise SettingsError("CALLMFA_WEBHOOK_CONCURRENCY must be at least 1")
        unknown = set(self.alert_event_set) - set(SECURITY_TYPES)
        if unknown:
            raise SettingsError(f"CALLMFA_ALERT_EVENTS: unknown event(s) {sorted(unknown)}; "
                                f"known: {', '.join(SECURITY_TYPES)}")
        if self.smtp_starttls not in ("on", "tls", "off"):
            raise SettingsError("CALLMFA_SMTP_STARTTLS must be on, tls or off")
        if not 0 < self.smtp_port < 65536:
            raise SettingsError("CALLMFA_SMTP_PORT must be 1 to 65535")
        if (self.smtp_starttls == "off" and (self.smtp_user or self.smtp_password)
                and not is_loopback(self.smtp_host)):
            raise SettingsError(
                "CALLMFA_SMTP_STARTTLS=off would send the SMTP user and password in clear "
                f"text to {self.smtp_host}: use on or tls (or off to a relay on this host)")
        for name in ("alert_email", "smtp_from", "smtp_host", "smtp_user"):
            if any(c in getattr(self, name) for c in "\r\n\0"):
                raise SettingsError(f"CALLMFA_{name.upper()} must not contain CR, LF or NUL")

    @property
    def webhooks_configured(self) -> bool:
        """Whether any webhook may be sent (a URL, or callback URLs allowed)."""
        return bool(self.webhook_url or self.security_webhook_url or self.webhook_allowed_urls)

    @property
    def security_url(self) -> str:
        """Where security events are POSTed ('' for nowhere)."""
        return self.security_webhook_url or self.webhook_url

    @property
    def alert_event_set(self) -> frozenset[str]:
        """The security events that are e-mailed."""
        return frozenset(e.strip() for e in self.alert_events.split(",") if e.strip())

    @property
    def alert_recipients(self) -> tuple[str, ...]:
        """CALLMFA_ALERT_EMAIL as addresses."""
        return tuple(a.strip() for a in self.alert_email.split(",") if a.strip())


    def _check_sentinel(self) -> None:
        try:
            self.sentinel_addresses  # noqa: B018 - parsed for its errors
        except ValueError as e:
            raise SettingsError(f"CALLMFA_REDIS_SENTINELS: {e}") from None
        if not self.redis_sentinel_service.strip() or any(
                c in self.redis_sentinel_service for c in " \r\n\0"):
            raise SettingsError("CALLMFA_REDIS_SENTINEL_SERVICE must be one word")
        if self.redis_sentinel_tls not in (0, 1):
            raise SettingsError("CALLMFA_REDIS_SENTINEL_TLS must be 0 or 1")
        if self.redis_wait_replicas < 0 or self.redis_wait_timeout_ms < 1:
            raise SettingsError("CALLMFA_REDIS_WAIT_REPLICAS must not be negative and "
                                "CALLMFA_REDIS_WAIT_TIMEOUT_MS must be at least 1")
        if self.redis_failover_s < 0:
            raise SettingsError("CALLMFA_REDIS_FAILOVER_S must not be negative")

    @property
    def sentinel_addresses(self) -> tuple[tuple[str, int], ...]:
        """``redis_sentinels`` as (host, port) pairs; ValueError on a malformed one."""
        out = []
        for item in self.redis_sentinels.split(","):
            if not (item := item.strip()):
                continue
            host, sep, port = item.rpartition(":")
            host = host.strip("[]")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"bad Sentinel address {item!r} (expected host:port)")
            out.append((host, int(port)))
        return tuple(out)

    def signing_refusal(self) -> str | None:
        """Why outcomes would not be signed as they must be (for ``callmfa serve`` and
        ``callmfa check``); None when a key of at least 32 bytes is set, or when
        CALLMFA_INSECURE_UNSIGNED=1 accepts unsigned outcomes on purpose."""
        if not self.signing_key and self.signing_key_previous:
            return "CALLMFA_SIGNING_KEY_PREVIOUS is set without CALLMFA_SIGNING_KEY"
        if not self.signing_key:
            return None if self.insecure_unsigned else (
                "no CALLMFA_SIGNING_KEY (or CALLMFA_SIGNING_KEY_FILE): outcomes must be signed "
                "so that sign-in services can tell forged ones; generate one with "
                "`head -c 32 /dev/urandom | base64`, or set CALLMFA_INSECURE_UNSIGNED=1 to "
                "run unsigned"
            )
        for name, key in (("CALLMFA_SIGNING_KEY", self.signing_key),
                          ("CALLMFA_SIGNING_KEY_PREVIOUS", self.signing_key_previous)):
            size = len(key.encode())
            if key and size < MIN_SIGNING_KEY_BYTES:
                return (f"{name} has {size} bytes; it needs at least "
                        f"{MIN_SIGNING_KEY_BYTES} (`head -c 32 /dev/urandom | base64`)")
        return None

    @property
    def verifying_keys(self) -> tuple[bytes, ...]:
        """The keys an outcome may be signed with: the signing key, then the previous one
        while they are rotated; () when outcomes are not signed."""
        return tuple(k.encode() for k in (self.signing_key, self.signing_key_previous) if k)

    def agi_peer_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """``agi_allowed_peers`` as networks (a bare address is a /32 or /128)."""
        return tuple(
            ipaddress.ip_network(item.strip(), strict=False)
            for item in self.agi_allowed_peers.split(",") if item.strip()
        )

    @property
    def dialplan_context(self) -> str:
        """The context the originator sends calls to, for the configured AGI mode."""
        return self.context if self.agi_mode == "fastagi" else f"{self.context}-classic"

    @property
    def role_set(self) -> frozenset[str]:
        """The roles of ``roles`` as a set."""
        return frozenset(r.strip() for r in self.roles.split(",") if r.strip())

    @property
    def ivr_here(self) -> bool:
        """Whether the IVR sessions of the calls this process places run in this process:
        it serves FastAGI (role agi, agi_mode fastagi) where ``agi_url`` points (its listen
        address and port, or a loopback address while it listens on one or on all)."""
        if self.agi_mode != "fastagi" or "agi" not in self.role_set:
            return False
        address = agi_address(self.agi_url)
        if address is None or address[1] != self.agi_port:
            return False
        host = address[0]
        if host == self.agi_host:
            return True
        return is_loopback(host) and (is_loopback(self.agi_host) or self.agi_host in _ANY)

    @property
    def asterisks(self) -> list[tuple[str, int]]:
        """Every AMI endpoint as (host, port)."""
        if not self.ami_endpoints.strip():
            return [(self.ami_host, self.ami_port)]
        out = []
        for item in self.ami_endpoints.split(","):
            host, _, port = item.strip().rpartition(":")
            try:
                out.append((host, int(port)))
            except ValueError:
                raise SettingsError(f"CALLMFA_AMI_ENDPOINTS: bad endpoint {item!r}") from None
        return out

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from the environment over ``CALLMFA_CONFIG_FILE`` over the defaults.

        The file holds ``CALLMFA_NAME=value`` lines (``#`` comments); it is read again on
        SIGHUP, so it is where settings that change at run time belong.
        """
        env = dict(os.environ if environ is None else environ)
        path = env.get(ENV_PREFIX + "CONFIG_FILE")
        if not path:
            return cls.from_env(env)
        merged = read_config_file(path)
        merged.update(env)
        return cls.from_env(merged)

    # What SIGHUP may change; everything else (addresses, secrets) needs a restart.
    RELOADABLE = frozenset({
        "caller_id", "ring_timeout_s", "max_call_s", "max_in_flight", "max_per_asterisk",
        "input_timeout_s", "max_attempts", "request_ttl_s", "outcome_grace_s",
        "shutdown_grace_s", "log_level", "dial_template", "agi_url",
    })

    def changed_fields(self, other: Settings) -> set[str]:
        """Names of the settings whose values differ (consumer aside)."""
        return {f.name for f in dataclasses.fields(self)
                if f.name != "consumer" and getattr(self, f.name) != getattr(other, f.name)}

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``CALLMFA_*`` variables.

        Variables that name no setting are ignored: the sandbox and tests share the prefix.
        """
        env = os.environ if environ is None else environ
        known = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for key, raw in env.items():
            if not key.startswith(ENV_PREFIX):
                continue
            name = key[len(ENV_PREFIX) :].lower()
            if name == "config_file":
                continue  # read by load()
            if name.endswith("_file") and name[: -len("_file")] in SECRETS:
                try:
                    values[name[: -len("_file")]] = Path(raw).read_text().strip()
                except OSError as e:
                    raise SettingsError(f"{key}: cannot read {raw}: {e.strerror}") from None
                except UnicodeDecodeError:
                    raise SettingsError(f"{key}: {raw} is not UTF-8 text") from None
                continue
            if name not in known:
                continue  # other tools (the sandbox, tests) share the prefix
            values[name] = _convert(key, raw, known[name].type)
        return cls(**values)

    @classmethod
    def reference(cls) -> list[tuple[str, str, str]]:
        """(variable, default, description) for every setting, for the docs."""
        rows = []
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                default = "" if f.name in SECRETS else str(f.default)
            else:
                default = "(host-pid)"
            rows.append((ENV_PREFIX + f.name.upper(), default, f.metadata["doc"]))
        return rows


def _convert(key: str, raw: str, kind: object) -> object:
    try:
        if kind in (int, "int"):
            return int(raw)
        if kind in (float, "float"):
            return float(raw)
    except ValueError:
        raise SettingsError(f"{key}={raw!r} is not a number") from None
    return raw


def default_config_file(environ: MutableMapping[str, str],
                        default: str | Path = DEFAULT_CONFIG_FILE) -> None:
    """Name ``default`` in ``CALLMFA_CONFIG_FILE`` when it is unset and the file exists
    (an empty ``CALLMFA_CONFIG_FILE`` reads no file)."""
    key = ENV_PREFIX + "CONFIG_FILE"
    if key not in environ and Path(default).is_file():
        environ[key] = str(default)


AGI_PORT = 4573  # Asterisk's, when an agi:// URL names none


def agi_address(url: str) -> tuple[str, int] | None:
    """The (host, port) an ``agi://`` or ``hagi://`` URL names, as Asterisk's AGI() reads
    it; None when it is malformed. As in Asterisk (ast_sockaddr_split_hostport), a host of
    two colons or more without brackets is an IPv6 address with no port:
    ``agi://2001:db8::10/verify`` is port 4573, ``agi://[2001:db8::10]:4574/verify`` not."""
    try:
        url_parts = urlsplit(url)
        if url_parts.scheme not in ("agi", "hagi"):
            return None
        netloc = url_parts.netloc.rpartition("@")[2]
        if netloc.count(":") > 1 and not netloc.startswith("["):
            return str(ipaddress.IPv6Address(netloc)), AGI_PORT
        port = url_parts.port
    except ValueError:  # a port that is no number or out of range, a broken address
        return None
    if not url_parts.hostname:
        return None
    return url_parts.hostname, port or AGI_PORT


def config_line(name: str, value: object) -> str:
    """``name="value"``: a line :func:`read_config_file` reads back as ``value``, whole (a
    ``#``, quotes or spaces in it included: only the outer pair of quotes is taken off)."""
    return f'{name}="{value}"'


def read_config_file(path: str | Path) -> dict[str, str]:
    """``CALLMFA_NAME=value`` lines (``#`` comments; an ``export`` prefix and a wholly
    quoted value are allowed, as in a shell env file); SettingsError for anything else."""
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise SettingsError(f"cannot read {path}: {e}") from None
    values: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        line = line.strip().removeprefix("export ")
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip().startswith(ENV_PREFIX):
            raise SettingsError(f"{path}:{number}: expected CALLMFA_NAME=value")
        # (A blank before the '#' counts with no value before it: 'NAME=  # note' is
        # an empty value to a shell, and was '# note' here.)
        spaced = value[:1].isspace()
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        elif re.search(r"\s#", value) or (spaced and value.startswith("#")):
            # A shell takes it for a comment, systemd's EnvironmentFile for part of the
            # value: refused, as a dial template or a secret file's name would be wrong.
            raise SettingsError(f"{path}:{number}: a '#' after the value is no comment: "
                                "put the comment on a line of its own (or quote the value)")
        values[key.strip()] = value
    return values


# Listen addresses that take connections to loopback too: all interfaces.
_ANY = frozenset({"", "0.0.0.0", "::"})  # noqa: S104 - compared with, never bound
