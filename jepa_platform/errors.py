"""User-facing errors: the CLI prints these as one line that says what to fix, and exits non-zero."""


class JepaError(Exception):
    """Bad input (config, data, checkpoint, path); the message names the fix."""


class ConfigError(JepaError):
    """A config value or override that cannot work."""


class DataError(JepaError):
    """Missing, malformed or undecodable data."""


class CheckpointError(JepaError):
    """A checkpoint that is missing, unsafe or does not match the model."""
