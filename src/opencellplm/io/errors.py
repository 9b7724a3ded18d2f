"""The error raised for checkpoint files that cannot be used."""


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, or does not match the model it claims to hold."""
