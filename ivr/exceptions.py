"""callmfa's one exception tree. Kept alone so that every module may import it."""

from __future__ import annotations


class IvrError(Exception):
    """Base of every error callmfa raises on purpose."""


class SettingsError(IvrError):
    """A setting is missing or malformed."""


class RequestError(IvrError):
    """A verification request is invalid; ``detail`` is the one-word reason for the outcome."""

    def __init__(self, detail: str, message: str) -> None:
        super().__init__(message)
        self.detail = detail
        self.message = message


class DirectoryError(IvrError):
    """The user directory could not answer (an LDAP server down or refusing the bind)."""


class AmiError(IvrError):
    """The Asterisk Manager Interface failed; ``payload`` keeps what Asterisk sent."""

    def __init__(self, message: str, payload: object = None) -> None:
        super().__init__(message)
        self.payload = payload


class AmiConnectError(AmiError):
    """No TCP connection to AMI, or it was lost."""


class AmiLoginError(AmiError):
    """AMI refused the login (wrong user or secret, or the host is not permitted)."""


class AgiError(IvrError):
    """An AGI peer broke the protocol; ``raw`` keeps the offending line(s)."""

    def __init__(self, message: str, raw: str = "") -> None:
        super().__init__(message)
        self.raw = raw


class AgiCommandError(AgiError):
    """Asterisk answered a command with 510, 511 (not a hang-up) or 520."""

    def __init__(self, code: int, raw: str) -> None:
        super().__init__(f"AGI command failed with {code}", raw)
        self.code = code


class AgiConnectionLostError(AgiError):
    """The AGI connection ended with no hang-up from Asterisk: Asterisk itself went away.

    A caller's hang-up always arrives as a ``HANGUP`` line or ``result=-1`` first.
    """


class AgiHangup(IvrError):  # noqa: N818 - a control-flow signal, not a failure
    """The caller hung up. Not an error: drivers turn it into the flow's HungUp event."""


class OutcomeSignatureError(IvrError):
    """An outcome is unsigned or its signature does not match: it may be forged."""


class OutcomeBindingError(OutcomeSignatureError):
    """An outcome (perhaps genuine and signed) that does not answer the request waited for:
    another id or user, or older than the request. A replay: refuse it like a forgery."""
