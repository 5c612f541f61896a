"""The `deltaserve` command line and (later) the HTTP server."""
