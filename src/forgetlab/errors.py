"""User-facing errors.

Anything the user can fix (bad config, missing file, unknown name, NaN loss) raises
`ForgetlabError`; the CLI prints its message as one line and exits non-zero. Any other
exception is a bug and shows a traceback (always with --debug).
"""


class ForgetlabError(Exception):
    """A problem with the user's input or environment, explained in one line."""

    def __str__(self) -> str:
        # One line whatever the message embeds (a value with a line break, a library's own
        # multi-line text): the CLI prints it as `forgetlab: error: <one line>`.
        lines = super().__str__().splitlines()
        return " ".join(part.strip() for part in lines if part.strip())


class ConfigError(ForgetlabError):
    """The config is invalid (unknown key, wrong type, bad value)."""


class DataError(ForgetlabError):
    """A task's data is missing or malformed."""


class TrainingDiverged(ForgetlabError):
    """The loss became NaN or infinite; the stage stops, earlier results are kept."""
