"""An embedded GWS simulator: REST email Sends, sessions, CSRF and Bayeux notifications.

    gws.py       the GWS behaviour, its fault switches and the endpoints (control ones
                 listed in its docstring); `Simulator`, `SimulatorSettings`, `serve`
    agents.py    the users (the configured one, agent-0001 …, added ones), each with
                 its own email workspace and HTTP sessions
    bayeux.py    a generic long-polling Bayeux server, clients tagged by user
    control.py   the /control API's handlers
    activity.py  steady demo traffic to random subscribed users
    samples.py   notification shapes of every kind GWS's docs name
    counters.py  a count with its peak in one wall-clock second
    options.py   `gws-notifyd simulate`'s switches
    testing.py   driving the simulator as an agent would, for tests and benchmarks

It is a GWS of its own: it imports nothing of the daemon.
"""

from daemon.simulator.gws import Simulator, SimulatorSettings, serve

__all__ = ["Simulator", "SimulatorSettings", "serve"]
