"""Errors a service raises for bad input or a refused action; each says what is wrong and what to do.

Views answer them with 4xx and the message, commands with a non-zero exit and the message.
Nothing has been written when one is raised.
"""


class ServiceError(Exception):
    status_code = 400

    def __init__(self, message: str, *, field: str | None = None):
        self.message = message
        self.field = field
        super().__init__(message)

    def as_dict(self) -> dict[str, str | None]:
        return {"error": self.message, "field": self.field}


class InvalidInput(ServiceError):
    status_code = 400


class NotFound(ServiceError):
    status_code = 404


class Conflict(ServiceError):
    """The action does not fit the current state (e.g. retiring a version with instances in flight)."""

    status_code = 409
