"""wsproxy-loadkit: deploy, drive and measure WebSocket streaming proxies."""

__version__ = "0.1.0"
