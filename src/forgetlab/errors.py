"""User-facing errors.

Anything the user can fix (bad config, missing file, unknown name, NaN loss) raises
`ForgetlabError`; the CLI prints its message as one line and exits non-zero. Any other
exception is a bug and shows a traceback (always with --debug).
"""


class ForgetlabError(Exception):
    """A problem with the user's input or environment, explained in one line."""


class ConfigError(ForgetlabError):
    """The config is invalid (unknown key, wrong type, bad value)."""


class DataError(ForgetlabError):
    """A task's data is missing or malformed."""


class TrainingDiverged(ForgetlabError):
    """The loss became NaN or infinite; the stage stops, earlier results are kept."""
