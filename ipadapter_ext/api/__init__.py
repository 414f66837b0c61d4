"""The HTTP side of the extension: request payloads, error mapping and the read-only routes."""
