"""A user's mistake, raised at any layer (registry, pipeline, ingest) and reported by the CLI
and the flows as one line: a leaf module, so that the ingest adapters can raise it without
importing the registry."""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix (a model, version or alias that does not exist, a store that
    cannot be reached, a warehouse without the data a step needs, a source folder that is not
    there). The message says what is wrong and what to do: the CLI prints it as one line, and a
    flow fails with it at once, not retried (trying again cannot help)."""
