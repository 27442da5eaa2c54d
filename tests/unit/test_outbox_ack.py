"""The outbox as the telemetry uploader sees it: batch appends, a watermark, acks for all kinds."""

from pathlib import Path

from edge_agent.outbox import Outbox


def test_append_many_stores_rows_in_order_with_growing_seqs(tmp_path: Path):
    outbox = Outbox(tmp_path / "outbox.db", 1 << 20)
    seqs = outbox.append_many("request", [b"a", b"b", b"c"])
    assert seqs == sorted(seqs) and len(set(seqs)) == 3
    assert [(r.seq, r.kind, r.payload) for r in outbox.pending()] == [
        (seqs[0], "request", b"a"),
        (seqs[1], "request", b"b"),
        (seqs[2], "request", b"c"),
    ]


def test_acknowledge_through_deletes_every_kind_up_to_the_seq(tmp_path: Path):
    outbox = Outbox(tmp_path / "outbox.db", 1 << 20)
    seqs = outbox.append_rows(
        [("request", b"1"), ("escalation", b"2"), ("hard_example", b"3"), ("request", b"4")]
    )
    assert outbox.acknowledge_through(seqs[2]) == 3
    assert [r.seq for r in outbox.pending()] == [seqs[3]]
    assert outbox.bytes_used == 1


def test_the_watermark_persists_and_never_moves_back(tmp_path: Path):
    outbox = Outbox(tmp_path / "outbox.db", 1 << 20)
    seqs = outbox.append_many("request", [b"x"] * 5)
    outbox.acknowledge_through(seqs[3])
    outbox.acknowledge_through(seqs[1])
    outbox.close()
    reopened = Outbox(tmp_path / "outbox.db", 1 << 20)
    assert reopened.acked_seq == seqs[3]
    assert [r.seq for r in reopened.pending()] == [seqs[4]]


def test_rows_dropped_by_the_budget_advance_the_watermark_and_are_counted(tmp_path: Path):
    outbox = Outbox(tmp_path / "outbox.db", max_bytes=1000)
    outbox.append_many("hard_example", [b"h" * 100] * 5)
    seqs = outbox.append_many("request", [b"r" * 100] * 10)
    kept = outbox.pending()
    assert [r.seq for r in kept] == seqs  # the five hard examples went first
    assert outbox.acked_seq == seqs[0] - 1
    assert outbox.dropped("hard_example") == 5 and outbox.dropped_total() == 5


def test_sequence_numbers_are_never_reused_after_a_delete(tmp_path: Path):
    outbox = Outbox(tmp_path / "outbox.db", 1 << 20)
    first = outbox.append("request", b"a")
    outbox.acknowledge_through(first)
    outbox.close()
    assert Outbox(tmp_path / "outbox.db", 1 << 20).append("request", b"b") > first


def test_pending_after_a_seq_skips_older_rows(tmp_path: Path):
    outbox = Outbox(tmp_path / "outbox.db", 1 << 20)
    seqs = outbox.append_many("request", [b"a", b"b", b"c"])
    assert [r.seq for r in outbox.pending(after_seq=seqs[0], limit=1)] == [seqs[1]]
