"""Operations: the commands an administrator runs beside the service.

``callmfa check`` (:mod:`.doctor`, with :mod:`.probe` and :mod:`.dialcheck`), ``report``,
``install-dialplan`` (:mod:`.commands`), the security team's ``block``/``bypass``
(:mod:`.admin`) and ``pin`` (:mod:`.pincli`) commands, and the build tools that generate the
settings reference (:mod:`.reference`) and the prompts (:mod:`.promptgen`).
"""
