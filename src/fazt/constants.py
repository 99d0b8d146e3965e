"""Numbers and names that several layers share, each defined here once."""

MB = 1024 * 1024
PIECE = 64 * 1024  # how much of an upload or a file is read at a time
DEFAULT_PORT = 4698  # the plain HTTP port when neither --port nor the `port` setting says
SCRIPT = "api/main.js"  # a site's back end
