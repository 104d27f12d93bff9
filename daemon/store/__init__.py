"""SQLite store: pending sends, the outbox, per-sink cursors, dead letters.

The only package that speaks SQL:

    rows.py      row types (OutboxRow, DeadLetter, ...), no SQL: what sinks import
    schema.py    the schema, its migrations, send <-> row
    database.py  `Store`: the synchronous SQL and its transactions (the CLI uses it)
    dead_letters.py  the dead-letter part of `Store`
    bridge.py    `AsyncStore`: `Store` on one thread of its own, for the event loop
    call_thread.py  `CallThread`: that thread (calls in order, results to the loop)
    writer.py    `OutcomeWriter`: group commit of sends, events and kept input

Rules it keeps:
- a send is written before it is forwarded to GWS (`commit_outcomes(inserts=)`,
  awaited by the API before it forwards);
- resolving sends and writing their events is one transaction
  (`commit_outcomes`); notifications are written many per transaction, never
  one per message (`OutcomeWriter` groups whatever arrives during a commit;
  the tracker hands over a large Bayeux answer in chunks of 2,000);
- an outbox row is deleted only once every sink's cursor has passed it (in
  the commit that moves the cursors, or by `prune_outbox`); a sink that gives
  up on an event moves it to dead letters first, in the same transaction that
  moves its cursor;
- every prune (outbox, sends, dead letters) deletes at most `PRUNE_SLICE`
  rows a transaction, so that the commits go in between.
"""

from daemon.store.bridge import AsyncStore
from daemon.store.database import Store
from daemon.store.rows import MALFORMED_SINK, DeadLetter, OutboxRow
from daemon.store.schema import SCHEMA_VERSION, send_row, send_update
from daemon.store.writer import OutcomeWriter

__all__ = [
    "MALFORMED_SINK",
    "SCHEMA_VERSION",
    "AsyncStore",
    "DeadLetter",
    "OutboxRow",
    "OutcomeWriter",
    "Store",
    "send_row",
    "send_update",
]
