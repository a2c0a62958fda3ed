"""kit.client._accounting: exact lost / duplicated / out-of-order counts and recorded metrics."""

from __future__ import annotations

from kit.client._accounting import Recorder

MS = 1_000_000


def query(rec: Recorder, submit: int = 1000 * MS):
    return rec.new_query("s1", 0, submit, submit, None)


def feed(q, seqs, start=1001 * MS, step=2 * MS, ts_behind=1 * MS):
    t = start
    for s in seqs:
        q.token(s, t - ts_behind, t, t)
        t += step
    return t


def test_in_order_stream_has_no_anomalies_and_records_every_metric():
    rec = Recorder()
    q = query(rec)
    t = feed(q, range(10))
    q.done(10, t)
    q.finish()
    assert (q.status, q.lost, q.duplicated, q.out_of_order, q.received) == ("ok", 0, 0, 0, 10)
    h = rec.hists
    assert h["inter_token"].count == 9 and h["inter_token"].min == 2000  # us
    assert h["delivery"].count == 10 and h["delivery"].max == 1000
    assert h["ttft"].min == 1000 and h["latency"].count == 1 and h["service_latency"].count == 1
    assert rec.counters["tokens"] == 10 and rec.counters["queries_ok"] == 1


def test_gap_counts_lost_tokens_exactly():
    rec = Recorder()
    q = query(rec)
    t = feed(q, [0, 1, 4, 5, 9])
    q.done(12, t)  # seqs 2,3,6,7,8 missing and 10,11 never came
    q.finish()
    assert q.lost == 7 and q.status == "lost_tokens"
    assert "7 of 12 tokens lost" in q.error
    assert rec.counters["lost_tokens"] == 7 and rec.counters["queries_failed"] == 1


def test_late_arrival_of_a_skipped_seq_is_out_of_order_not_lost():
    rec = Recorder()
    q = query(rec)
    t = feed(q, [0, 2, 1, 3])
    q.done(4, t)
    q.finish()
    assert (q.lost, q.out_of_order, q.duplicated, q.status) == (0, 1, 0, "ok")


def test_repeats_are_duplicates():
    rec = Recorder()
    q = query(rec)
    t = feed(q, [0, 1, 1, 2, 0, 3])
    q.done(4, t)
    q.done(4, t)  # a second done is a duplicate too
    q.finish()
    assert (q.duplicated, q.lost, q.out_of_order) == (3, 0, 0)


def test_without_done_lost_comes_from_the_announced_count():
    rec = Recorder()
    q = query(rec)
    q.expected = 20
    feed(q, range(5))
    q.finish(status="timeout", error="no done")
    assert q.lost == 15 and q.status == "timeout"
    assert rec.hists["latency"].count == 0  # no done, no latency
    assert rec.hists["ttft"].count == 1
    assert rec.counters["query_status_timeout"] == 1


def test_finish_is_idempotent():
    rec = Recorder()
    q = query(rec)
    q.done(0, 1001 * MS)
    q.finish()
    q.finish(status="error")
    assert q.status == "ok" and rec.counters["queries_ok"] == 1 and rec.hists["latency"].count == 1


def test_latency_is_timed_from_the_intended_start():
    rec = Recorder()
    q = rec.new_query("s", 0, 500 * MS, 1000 * MS, None)  # intended 500 ms before the submit
    q.done(0, 1100 * MS)
    q.finish()
    assert rec.hists["latency"].max == 600_000 and rec.hists["service_latency"].max == 100_000


def test_timeline_samples_are_deltas_per_second():
    rec = Recorder()
    rec.counters["tokens"] += 5
    rec.active_sessions = 2
    rec.sample_timeline(10)
    rec.counters["tokens"] += 3
    rec.error("x")
    rec.sample_timeline(11)
    rows = {r["second"]: r for r in rec.timeline.to_rows()}
    assert rows[10]["tokens"] == 5 and rows[11]["tokens"] == 3
    assert rows[11]["errors"] == 1 and rows[10]["active_sessions"] == 2
    assert rec.errors["x"] == 1


def test_the_status_histograms_are_made_again_only_when_a_value_was_added():
    """status.json's coarse histograms are cached by count: unchanged while idle, current after a token."""
    from kit.metrics import Histogram

    rec = Recorder()
    q = query(rec)
    t = feed(q, range(5))
    first = rec.coarse_dict("delivery")
    assert rec.coarse_dict("delivery") is first  # nothing recorded since: not made again
    assert first == rec.hists["delivery"].coarse().to_dict()
    feed(q, [5], start=t, ts_behind=40 * MS)
    after = rec.coarse_dict("delivery")
    assert after == rec.hists["delivery"].coarse().to_dict()
    h = Histogram.from_dict(after)
    assert h.count == 6 and h.max == 40_000  # the new value is in it


def test_csv_row_has_the_documented_columns():
    from kit.client._output import QUERY_FIELDS

    rec = Recorder()
    q = query(rec)
    q.query_id = "q1"
    q.done(feed(q, range(3)) and 3, 1010 * MS)
    q.finish()
    row = q.row(rec.mono_to_wall_ns)
    assert list(row) == QUERY_FIELDS
    assert row["tokens"] == 3 and row["status"] == "ok" and float(row["latency_ms"]) == 10.0


def test_a_done_marked_cancelled_counts_the_unsent_tokens_as_cancelled_not_lost():
    rec = Recorder()
    q = query(rec)
    q.expected = 20  # /run announced 20; the session was closed after 6 were published
    t = feed(q, [0, 1, 2, 4, 5])  # seq 3 was published and never came: lost
    q.done(6, t, True)
    q.finish()
    assert (q.status, q.lost, q.cancelled_tokens) == ("cancelled", 1, 14)
    assert "after 6 of 20 tokens" in q.error and "1 of them lost" in q.error
    c = rec.counters
    assert (c["lost_tokens"], c["cancelled_tokens"], c["query_status_cancelled"], c["queries_ok"]) == (1, 14, 1, 0)
    assert rec.hists["latency"].count == 1  # it ended: its latency to the cancel is recorded


def test_a_done_without_the_mark_is_read_as_before():
    rec = Recorder()
    q = query(rec)
    q.expected = 3
    q.done(3, feed(q, range(3)))
    q.finish()
    assert (q.status, q.lost, q.cancelled_tokens, rec.counters["cancelled_tokens"]) == ("ok", 0, 0, 0)
