"""The one exception type for user mistakes (bad files, fields, configs, arguments).

The CLI prints a `UserError` as a single line and exits with status 2 -- no traceback --
because the message already names what is wrong and where. Anything else is a bug and keeps
its traceback.
"""


class UserError(Exception):
    """A problem with the user's input; the message names the file/line/field at fault."""
