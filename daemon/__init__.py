"""gws-notifyd: durable, correlated outcomes for Genesys Web Services email Sends."""

__version__ = "0.1.0"
