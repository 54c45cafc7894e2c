"""The run report: one self-contained HTML file a reader opens without a server."""
