"""User-facing errors: bad input that the command-line tools report as one line, without a traceback."""


class UserError(ValueError):
    """Bad input from a user (config, data, checkpoint, CLI flag).

    The message is one line naming the bad value and what is allowed. ``train.py`` and ``sample.py``
    print it as ``error: <message>`` and exit with status 2.
    """
