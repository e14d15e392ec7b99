"""The fronts through which sign-in systems reach callmfa besides the Redis contract.

Each front turns its protocol into a :class:`~ivr.domain.request.VerificationRequest` and an
outcome back into its protocol, nothing more; admission, the call and the outcome are the
same as for a request on the Redis stream.
"""
