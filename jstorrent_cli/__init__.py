"""jstorrent: a command-line BitTorrent downloader on Trio that explains itself."""

__version__ = "0.1.0"
