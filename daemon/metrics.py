"""Every Prometheus metric of the daemon, in one registry created once.

Labels come only from small fixed sets (sink and account names from the
config, reasons, states, outcomes); never a referenceId, an email id or an
address. The registry is passed in, never global, so each test builds its own.

What one GWS account does carries an `account` label; an account's parts see
its series through `AccountMetrics`, a view with the label already applied,
and never name the account themselves.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics import MetricWrapperBase

PREFIX = "gws_notifyd_"
SEND_OUTCOMES = ("accepted", "rejected", "error")
CORRELATION_RESULTS = ("matched", "unmatched", "timed_out", "reconciled")
DELIVERY_OUTCOMES = ("delivered", "retried", "dead_lettered")
RECONCILIATION_RESULTS = ("resolved", "still_pending", "timed_out", "failed")
LOGIN_FAILURE_REASONS = ("refused", "unreachable", "error")

# Send -> outcome takes from tens of milliseconds to minutes.
_OUTCOME_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
_DELIVERY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)
_REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)


class Metrics:
    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        malformed_reasons: Sequence[str] = (),
    ) -> None:
        """`malformed_reasons`: the fixed label set of notifications_malformed_total
        (the GWS adapter's), whose series exist from the start."""
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.build_info = Info(PREFIX + "build", "Version of gws-notifyd.", registry=r)
        self._define_send_metrics(r)
        self._define_outbox_metrics(r)
        self._define_gws_metrics(r)
        self.ready = Gauge(PREFIX + "ready", "1 while /readyz answers 200.", registry=r)

        # Series of the fixed label sets exist from the start, so that rate()
        # and absent() work before the first event of each kind.
        for reason in malformed_reasons:
            self.notifications_malformed.labels(reason)
        self._accounts: dict[str, AccountMetrics] = {}

    def account(self, name: str) -> AccountMetrics:
        """The view of one account's series (made, with its fixed series, on first use)."""
        view = self._accounts.get(name)
        if view is None:
            view = self._accounts[name] = AccountMetrics(self, name)
        return view

    def forget_account(self, name: str) -> None:
        """An account left the config: its series go (a stale `subscribed 0` would alert)."""
        view = self._accounts.pop(name, None)
        if view is not None:
            view.remove_series()

    def _define_send_metrics(self, r: CollectorRegistry) -> None:
        self.notifications_received = Counter(
            PREFIX + "notifications_received_total",
            "Notifications received from GWS, by channel and type.",
            ["account", "channel", "message_type", "notification_type"],
            registry=r,
        )
        self.notifications_malformed = Counter(
            PREFIX + "notifications_malformed_total",
            "Notifications that could not be used, by reason; each is kept as a dead letter.",
            ["reason"],
            registry=r,
        )
        self.sends = Counter(
            PREFIX + "sends_total",
            "Sends taken from the integration, by account and how GWS answered.",
            ["account", "outcome"],
            registry=r,
        )
        self.pending_sends = Gauge(
            PREFIX + "pending_sends", "Sends waiting for their outcome.", ["account"], registry=r
        )
        self.correlations = Counter(
            PREFIX + "correlations_total",
            "Outcomes by how they were tied to a send.",
            ["account", "result"],
            registry=r,
        )
        self.outcome_latency = Histogram(
            PREFIX + "send_outcome_latency_seconds",
            "Time from a Send to its outcome, by outcome state.",
            ["state"],
            buckets=_OUTCOME_BUCKETS,
            registry=r,
        )

    def _define_outbox_metrics(self, r: CollectorRegistry) -> None:
        self.sink_deliveries = Counter(
            PREFIX + "sink_deliveries_total",
            "Events handed to sinks, by sink and outcome.",
            ["sink", "outcome"],
            registry=r,
        )
        self.sink_duplicates_dropped = Counter(
            PREFIX + "sink_duplicates_dropped_total",
            "Events a bus sink's server dropped as already delivered (same event id).",
            ["sink"],
            registry=r,
        )
        self.sink_delivery_duration = Histogram(
            PREFIX + "sink_delivery_duration_seconds",
            "Time a sink took to take one batch.",
            ["sink"],
            buckets=_DELIVERY_BUCKETS,
            registry=r,
        )
        self.outbox_backlog = Gauge(
            PREFIX + "outbox_backlog",
            "Events written but not yet taken by the sink.",
            ["sink"],
            registry=r,
        )
        self.outbox_events = Gauge(
            PREFIX + "outbox_events", "Events held in the outbox (all sinks).", registry=r
        )
        self.outbox_capacity = Gauge(
            PREFIX + "outbox_capacity_events",
            "The outbox size cap (store.max_outbox_events).",
            registry=r,
        )
        self.dead_letters = Gauge(
            PREFIX + "dead_letters",
            "Dead letters kept in the store, by sink ((listener) for malformed input).",
            ["sink"],
            registry=r,
        )

    def _define_gws_metrics(self, r: CollectorRegistry) -> None:
        self.cometd_connected = Gauge(
            PREFIX + "cometd_connected",
            "1 while the account's CometD connection is up.",
            ["account"],
            registry=r,
        )
        self.cometd_subscribed = Gauge(
            PREFIX + "cometd_subscribed",
            "1 once the channels are subscribed on the account's current CometD session.",
            ["account"],
            registry=r,
        )
        self.cometd_handshakes = Counter(
            PREFIX + "cometd_handshakes",
            "Successful CometD handshakes (with subscription).",
            ["account"],
            registry=r,
        )
        self.cometd_reconnects = Counter(
            PREFIX + "cometd_reconnects",
            "Times the CometD connection was lost and had to be re-established.",
            ["account"],
            registry=r,
        )
        self.last_notification = Gauge(
            PREFIX + "last_notification_timestamp_seconds",
            "Unix time of the last notification received.",
            ["account"],
            registry=r,
        )
        self.reconciliations = Counter(
            PREFIX + "reconciliations_total",
            "Pending sends read back from GWS by GET, by result.",
            ["account", "result"],
            registry=r,
        )
        self.gws_login_failures = Counter(
            PREFIX + "gws_login_failures",
            "Failed GWS logins after start-up, by reason (refused: the credentials; "
            "unreachable: no answer; error: any other failure).",
            ["account", "reason"],
            registry=r,
        )
        self.gws_credentials_refused = Gauge(
            PREFIX + "gws_credentials_refused",
            "1 while GWS refuses the credentials (the daemon waits before each new try).",
            ["account"],
            registry=r,
        )
        self.gws_requests = Histogram(
            PREFIX + "gws_request_duration_seconds",
            "GWS REST requests, by operation and result.",
            ["operation", "result"],
            buckets=_REQUEST_BUCKETS,
            registry=r,
        )

    def track_sink(self, sink: str) -> None:
        """Create a sink's series (called for each configured sink)."""
        for outcome in DELIVERY_OUTCOMES:
            self.sink_deliveries.labels(sink, outcome)
        self.sink_duplicates_dropped.labels(sink)
        self.outbox_backlog.labels(sink).set(0)
        self.dead_letters.labels(sink)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


M = TypeVar("M", bound=MetricWrapperBase)


class _Labelled(Generic[M]):
    """A labelled metric with the account label applied: `.labels(rest...)`. Its
    children are kept (one dict lookup on the hot path, instead of the registry's
    locked one), and removed with the account."""

    __slots__ = ("_account", "_children", "_metric")

    def __init__(self, metric: M, account: str) -> None:
        self._metric = metric
        self._account = account
        self._children: dict[tuple[str, ...], M] = {}

    def labels(self, *values: str) -> M:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._metric.labels(self._account, *values)
        return child

    def remove_series(self) -> None:
        for values in self._children:
            self._metric.remove(self._account, *values)
        self._children.clear()


class AccountMetrics:
    """One account's series (the `account` label applied), and the shared ones
    an account's parts also report to. Same attribute names as `Metrics`."""

    def __init__(self, metrics: Metrics, account: str) -> None:
        self.account = account
        self._metrics = metrics
        m = metrics
        self.sends = _Labelled(m.sends, account)
        self.correlations = _Labelled(m.correlations, account)
        self.notifications_received = _Labelled(m.notifications_received, account)
        self.reconciliations = _Labelled(m.reconciliations, account)
        self.gws_login_failures = _Labelled(m.gws_login_failures, account)
        self._single = [
            m.pending_sends,
            m.cometd_connected,
            m.cometd_subscribed,
            m.cometd_handshakes,
            m.cometd_reconnects,
            m.last_notification,
            m.gws_credentials_refused,
        ]
        self.pending_sends = m.pending_sends.labels(account)
        self.cometd_connected = m.cometd_connected.labels(account)
        self.cometd_subscribed = m.cometd_subscribed.labels(account)
        self.cometd_handshakes = m.cometd_handshakes.labels(account)
        self.cometd_reconnects = m.cometd_reconnects.labels(account)
        self.last_notification = m.last_notification.labels(account)
        self.gws_credentials_refused = m.gws_credentials_refused.labels(account)
        # Shared by every account: their label sets would multiply by the accounts.
        self.notifications_malformed = m.notifications_malformed
        self.outcome_latency = m.outcome_latency
        self.gws_requests = m.gws_requests
        # Series of the fixed label sets exist from the start (see Metrics).
        for outcome in SEND_OUTCOMES:
            self.sends.labels(outcome)
        for result in CORRELATION_RESULTS:
            self.correlations.labels(result)
        for result in RECONCILIATION_RESULTS:
            self.reconciliations.labels(result)
        for reason in LOGIN_FAILURE_REASONS:
            self.gws_login_failures.labels(reason)

    def remove_series(self) -> None:
        for labelled in (
            self.sends,
            self.correlations,
            self.notifications_received,
            self.reconciliations,
            self.gws_login_failures,
        ):
            labelled.remove_series()
        for metric in self._single:
            metric.remove(self.account)
