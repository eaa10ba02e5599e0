"""The one exception type that the command line turns into a clear message and a non-zero exit.

Raise `SynthembedError` for bad input a user can fix (a missing file, a malformed line, an unknown setting); let genuine
bugs raise whatever they raise, so their tracebacks stay visible.
"""


class SynthembedError(Exception):
    """Bad input or a failed precondition, with a message that names the file, line or setting at fault."""
