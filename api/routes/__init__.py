"""One router per resource, mounted under ``/api/v1`` by ``api.app``."""
V1 = "/api/v1"
