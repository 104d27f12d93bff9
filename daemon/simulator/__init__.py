"""An embedded GWS simulator: REST email Sends, sessions, CSRF and Bayeux notifications.

`gws.py` owns the GWS behaviour and its fault switches; `bayeux.py` is a generic
long-polling Bayeux server it publishes through.
"""

from daemon.simulator.gws import Simulator, SimulatorSettings, serve

__all__ = ["Simulator", "SimulatorSettings", "serve"]
