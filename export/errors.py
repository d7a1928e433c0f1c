"""The one exception the exporter raises for bad input; its message names the file and problem."""


class ExportError(Exception):
    """A run cannot be exported as asked: the message says what is wrong and where."""
