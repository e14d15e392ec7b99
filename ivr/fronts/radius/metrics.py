"""The RADIUS front's metrics, registered in the service's own registry (:mod:`ivr.metrics`)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ...domain.outcome import Outcome
from .packets import Drop
from .replies import FRONT_MESSAGES


class RadiusMetrics:
    """Requests, accepts, challenges, rejects by reason, drops by cause, and those in flight."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.requests = Counter(
            "callmfa_radius_requests",
            "Access-Requests taken (retransmitted copies not counted again).", registry=r,
        )
        self.accepts = Counter("callmfa_radius_accepts", "Access-Accepts sent.", registry=r)
        self.challenges = Counter(
            "callmfa_radius_challenges", "Access-Challenges sent (number match).", registry=r
        )
        self.rejects = Counter(
            "callmfa_radius_rejects",
            "Access-Rejects sent, by reason (an outcome value, or the front's own: timeout, "
            "unknown_user, wrong_password, ...).", ["reason"], registry=r,
        )
        for reason in (*(o.value for o in Outcome), *FRONT_MESSAGES):
            self.rejects.labels(reason)
        self.drops = Counter(
            "callmfa_radius_drops",
            "Packets dropped without a reply, by cause (unknown_client, "
            "missing_message_authenticator, bad_message_authenticator, ...).", ["cause"],
            registry=r,
        )
        for cause in Drop:
            self.drops.labels(cause.value)
        self.retransmissions = Counter(
            "callmfa_radius_retransmissions",
            "Copies of a request already taken: joined (still in flight) or answered from the "
            "reply cache.", ["answer"], registry=r,
        )
        for answer in ("joined", "cached"):
            self.retransmissions.labels(answer)
        self.upstream_refused = Counter(
            "callmfa_radius_upstream_replies_refused",
            "Replies of the upstream RADIUS server (CALLMFA_RADIUS_PASSWORD=radius) refused: "
            "their authenticators do not verify (forged, or another secret).", registry=r,
        )
        self.status_server = Counter(
            "callmfa_radius_status_server", "Status-Server requests answered (RFC 5997).",
            registry=r,
        )
        self.in_flight = Gauge(
            "callmfa_radius_in_flight", "Access-Requests held until their outcome now.",
            registry=r,
        )
        self.added_latency = Histogram(
            "callmfa_radius_reply_seconds",
            "From the outcome reaching the front to the reply sent: what RADIUS adds.",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1),
            registry=r,
        )
