"""The prompt catalogue: every prompt the flow plays, by id and language, in one place.

``make prompts`` turns these texts into callmfa's own recordings (espeak-ng + sox, 8 kHz
mono WAV) under ``<sounds>/<lang>/callmfa/<id>.wav``, where Asterisk finds them for a channel
whose language is ``<lang>`` and falls back to ``en`` by itself. An administrator's own
recording ``<override dir>/<lang>/<id>.wav`` wins over the generated one.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

DEFAULT_LANGUAGE = "en"
SOUNDS_SUBDIR = "callmfa"

PROMPTS: dict[str, dict[str, str]] = {
    "greeting": {
        "en": "This is a sign-in verification call. To approve the sign-in, press pound. "
              "If you did not try to sign in, press zero, then pound.",
        "fr": "Ceci est un appel de vérification de connexion. Pour approuver la connexion, "
              "appuyez sur dièse. Si vous n'avez pas essayé de vous connecter, appuyez sur "
              "zéro, puis dièse.",
        "de": "Dies ist ein Anruf zur Bestätigung einer Anmeldung. Um die Anmeldung zu "
              "bestätigen, drücken Sie die Raute-Taste. Wenn Sie sich nicht anmelden wollten, "
              "drücken Sie null und dann Raute.",
        "es": "Esta es una llamada de verificación de inicio de sesión. Para aprobarlo, pulse "
              "almohadilla. Si usted no intentó iniciar sesión, pulse cero y luego almohadilla.",
    },
    "pin_greeting": {
        "en": "This is a sign-in verification call. Enter your PIN, then press pound. "
              "If you did not try to sign in, press zero, then pound.",
        "fr": "Ceci est un appel de vérification de connexion. Saisissez votre code personnel, "
              "puis appuyez sur dièse. Si vous n'avez pas essayé de vous connecter, appuyez sur "
              "zéro, puis dièse.",
        "de": "Dies ist ein Anruf zur Bestätigung einer Anmeldung. Geben Sie Ihre PIN ein und "
              "drücken Sie dann Raute. Wenn Sie sich nicht anmelden wollten, drücken Sie null "
              "und dann Raute.",
        "es": "Esta es una llamada de verificación de inicio de sesión. Marque su PIN y luego "
              "pulse almohadilla. Si usted no intentó iniciar sesión, pulse cero y luego "
              "almohadilla.",
    },
    "match_greeting": {
        "en": "This is a sign-in verification call. Enter the two-digit number shown on your "
              "screen, then press pound. If you did not try to sign in, press zero, then pound.",
        "fr": "Ceci est un appel de vérification de connexion. Saisissez le nombre à deux "
              "chiffres affiché sur votre écran, puis appuyez sur dièse. Si vous n'avez pas "
              "essayé de vous connecter, appuyez sur zéro, puis dièse.",
        "de": "Dies ist ein Anruf zur Bestätigung einer Anmeldung. Geben Sie die zweistellige "
              "Zahl auf Ihrem Bildschirm ein und drücken Sie dann Raute. Wenn Sie sich nicht "
              "anmelden wollten, drücken Sie null und dann Raute.",
        "es": "Esta es una llamada de verificación de inicio de sesión. Marque el número de dos "
              "cifras que aparece en su pantalla y luego pulse almohadilla. Si usted no intentó "
              "iniciar sesión, pulse cero y luego almohadilla.",
    },
    "otp_greeting": {
        "en": "This call brings you a one-time code. To hear it, press pound. If you did not "
              "ask for a code, press zero, then pound.",
        "fr": "Cet appel vous apporte un code à usage unique. Pour l'entendre, appuyez sur "
              "dièse. Si vous n'avez pas demandé de code, appuyez sur zéro, puis dièse.",
        "de": "Dieser Anruf bringt Ihnen einen Einmalcode. Um ihn zu hören, drücken Sie Raute. "
              "Wenn Sie keinen Code angefordert haben, drücken Sie null und dann Raute.",
        "es": "Esta llamada le trae un código de un solo uso. Para escucharlo, pulse "
              "almohadilla. Si usted no pidió un código, pulse cero y luego almohadilla.",
    },
    "otp_code_is": {
        "en": "Your code is:",
        "fr": "Votre code est :",
        "de": "Ihr Code lautet:",
        "es": "Su código es:",
    },
    "otp_again": {
        "en": "Once again, your code is:",
        "fr": "Je répète, votre code est :",
        "de": "Noch einmal, Ihr Code lautet:",
        "es": "Repito, su código es:",
    },
    "otp_menu": {
        "en": "To hear the code again, press star.",
        "fr": "Pour réentendre le code, appuyez sur étoile.",
        "de": "Um den Code noch einmal zu hören, drücken Sie Stern.",
        "es": "Para escuchar el código otra vez, pulse asterisco.",
    },
    "otp_goodbye": {
        "en": "Goodbye.",
        "fr": "Au revoir.",
        "de": "Auf Wiederhören.",
        "es": "Adiós.",
    },
    "retry": {
        "en": "Sorry, that is not a valid key.",
        "fr": "Désolé, cette touche n'est pas valide.",
        "de": "Diese Eingabe ist leider ungültig.",
        "es": "Lo sentimos, esa tecla no es válida.",
    },
    "wrong_code": {
        "en": "That code is not correct.",
        "fr": "Ce code n'est pas correct.",
        "de": "Dieser Code ist nicht richtig.",
        "es": "Ese código no es correcto.",
    },
    # Secret collections (GET DATA) play one file: what comes before the prompt is said in it,
    # so that keys pressed while it plays count (a PIN keyed during "not correct").
    "pin_wrong_code": {
        "en": "That code is not correct. Enter your PIN again, then press pound.",
        "fr": "Ce code n'est pas correct. Saisissez de nouveau votre code personnel, puis "
              "appuyez sur dièse.",
        "de": "Dieser Code ist nicht richtig. Geben Sie Ihre PIN erneut ein und drücken Sie "
              "dann Raute.",
        "es": "Ese código no es correcto. Marque de nuevo su PIN y luego pulse almohadilla.",
    },
    "pin_retry": {
        "en": "Sorry, that is not a valid key. Enter your PIN, then press pound.",
        "fr": "Désolé, cette touche n'est pas valide. Saisissez votre code personnel, puis "
              "appuyez sur dièse.",
        "de": "Diese Eingabe ist leider ungültig. Geben Sie Ihre PIN ein und drücken Sie dann "
              "Raute.",
        "es": "Lo sentimos, esa tecla no es válida. Marque su PIN y luego pulse almohadilla.",
    },
    "match_retry": {
        "en": "Sorry, that is not a valid key. Enter the two-digit number shown on your "
              "screen, then press pound.",
        "fr": "Désolé, cette touche n'est pas valide. Saisissez le nombre à deux chiffres "
              "affiché sur votre écran, puis appuyez sur dièse.",
        "de": "Diese Eingabe ist leider ungültig. Geben Sie die zweistellige Zahl auf Ihrem "
              "Bildschirm ein und drücken Sie dann Raute.",
        "es": "Lo sentimos, esa tecla no es válida. Marque el número de dos cifras que "
              "aparece en su pantalla y luego pulse almohadilla.",
    },
    "approved": {
        "en": "Thank you. The sign-in is approved. Goodbye.",
        "fr": "Merci. La connexion est approuvée. Au revoir.",
        "de": "Danke. Die Anmeldung ist bestätigt. Auf Wiederhören.",
        "es": "Gracias. El inicio de sesión está aprobado. Adiós.",
    },
    "fraud_reported": {
        "en": "Thank you. The sign-in was blocked and reported. Goodbye.",
        "fr": "Merci. La connexion a été bloquée et signalée. Au revoir.",
        "de": "Danke. Die Anmeldung wurde blockiert und gemeldet. Auf Wiederhören.",
        "es": "Gracias. El inicio de sesión fue bloqueado y notificado. Adiós.",
    },
    "denied": {
        "en": "The sign-in is denied. Goodbye.",
        "fr": "La connexion est refusée. Au revoir.",
        "de": "Die Anmeldung wurde abgelehnt. Auf Wiederhören.",
        "es": "El inicio de sesión fue denegado. Adiós.",
    },
    "locked_out": {
        "en": "Too many wrong codes. Sign-in by phone is locked; please contact your "
              "administrator. Goodbye.",
        "fr": "Trop de codes erronés. La connexion par téléphone est bloquée; veuillez "
              "contacter votre administrateur. Au revoir.",
        "de": "Zu viele falsche Codes. Die Anmeldung per Telefon ist gesperrt; bitte wenden "
              "Sie sich an Ihre Administration. Auf Wiederhören.",
        "es": "Demasiados códigos incorrectos. El inicio de sesión por teléfono está bloqueado; "
              "contacte con su administrador. Adiós.",
    },
    "failed": {
        "en": "Sorry, no valid answer was received. Goodbye.",
        "fr": "Désolé, aucune réponse valide n'a été reçue. Au revoir.",
        "de": "Leider wurde keine gültige Eingabe empfangen. Auf Wiederhören.",
        "es": "Lo sentimos, no se recibió ninguna respuesta válida. Adiós.",
    },
}

# The digits an otp call reads, one file each (``digit_0`` ... ``digit_9``).
_DIGITS = {
    "en": ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"),
    "fr": ("zéro", "un", "deux", "trois", "quatre", "cinq", "six", "sept", "huit", "neuf"),
    "de": ("null", "eins", "zwei", "drei", "vier", "fünf", "sechs", "sieben", "acht", "neun"),
    "es": ("cero", "uno", "dos", "tres", "cuatro", "cinco", "seis", "siete", "ocho", "nueve"),
}
PROMPTS.update({
    f"digit_{d}": {lang: f"{words[d]}." for lang, words in _DIGITS.items()} for d in range(10)
})

LANGUAGES: tuple[str, ...] = tuple(PROMPTS["greeting"])


def prompt_language(lang: str) -> str:
    """The catalogue language for a request's ``lang`` (``fr-CA`` -> ``fr``; unknown -> en)."""
    base = lang.replace("_", "-").split("-", 1)[0].lower()
    return base if base in LANGUAGES else DEFAULT_LANGUAGE


def sound_files(
    prompt_ids: Iterable[str],
    lang: str = DEFAULT_LANGUAGE,
    *,
    override_dir: str = "",
    overridden: Collection[str] = (),
) -> tuple[str, ...]:
    """The files (no extension) Asterisk plays for these prompts, in order.

    Generated prompts are named relative to the sounds directory (Asterisk adds the
    channel's language); ``overridden`` ids play the administrator's file instead.
    """
    language = prompt_language(lang)
    return tuple(
        f"{override_dir}/{language}/{pid}" if pid in overridden else f"{SOUNDS_SUBDIR}/{pid}"
        for pid in prompt_ids
    )
