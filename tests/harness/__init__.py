"""What the tests and the benchmarks (bench/) share to run and drive real processes.

    daemon_process   `gws-notifyd run` as a subprocess: its config, its logs, its API
    bayeux_peers     the Node Bayeux peers (tests/peers) and the simulator as Bayeux servers
    webhook_receiver a webhook endpoint that records, refuses or is down
    waiting          `wait_until`: every wait on a condition, with a deadline

Imported as `tests.harness.*`: the repository root must be on sys.path (pytest's
`pythonpath = ["."]`; bench/ adds it itself). Nothing here needs pytest except the
helpers that skip a test when a peer cannot run.
"""
