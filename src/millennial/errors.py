"""The one base class of errors a user fixes (params, input data, artifacts on disk).

Stage entries and the CLI report these as one line naming the file, key or line, and exit 2;
anything else is a bug and keeps its traceback.
"""


class UserError(ValueError):
    """Bad input: the message names the file actually read and the key or line at fault."""


# What stage entries report as a message: a user error, or a file the user has not made yet.
USER_ERRORS = (UserError, FileNotFoundError)
