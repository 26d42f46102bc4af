"""The local control socket: newline-delimited JSON over a Unix socket (see docs/control.md).

The server runs inside each daemon; the client is what ``sift status --control``, ``sift-tui`` and
scripts use. Nothing here imports the daemons: they hand the server their handlers.
"""
