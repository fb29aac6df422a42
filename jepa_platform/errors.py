"""User-facing errors: the CLI prints these as one line that says what to fix, and exits non-zero."""


class JepaError(Exception):
    """Bad input (config, data, checkpoint, path); the message names the fix."""


class ConfigError(JepaError):
    """A config value or override that cannot work."""


class DataError(JepaError):
    """Missing, malformed or undecodable data."""


class CheckpointError(JepaError):
    """A checkpoint that is missing, unsafe or does not match the model."""


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line; for an error re-raised from a DataLoader worker (whose message carries
    the worker's traceback), the original message."""
    text = str(exc).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        text = last.split(": ", 1)[1] if last.split(": ", 1)[0].endswith(type(exc).__name__) else last
    return " ".join(text.split())
