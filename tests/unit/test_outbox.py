"""The outbox: durable, acknowledged deletes only, bounded with counted drops."""

from pathlib import Path

from edge_agent.outbox import Outbox


def test_records_survive_reopening_in_order(tmp_path: Path):
    outbox = Outbox(tmp_path / "outbox.db", 1 << 20)
    first = outbox.append("hard_example", b"a")
    second = outbox.append("hard_example", b"b")
    outbox.close()
    reopened = Outbox(tmp_path / "outbox.db", 1 << 20)
    assert [(r.seq, r.payload) for r in reopened.pending()] == [(first, b"a"), (second, b"b")]


def test_only_acknowledged_rows_are_deleted(tmp_path: Path):
    outbox = Outbox(tmp_path / "outbox.db", 1 << 20)
    seqs = [outbox.append("hard_example", bytes([i])) for i in range(5)]
    assert outbox.acknowledge("hard_example", seqs[2]) == 3
    assert [r.seq for r in outbox.pending()] == seqs[3:]


def test_past_the_budget_the_oldest_go_first_and_are_counted(tmp_path: Path):
    outbox = Outbox(tmp_path / "outbox.db", max_bytes=1000)
    for i in range(30):
        outbox.append("hard_example", bytes([i]) * 100)
    assert outbox.bytes_used <= 1000
    kept = outbox.pending()
    assert kept[-1].payload[0] == 29 and len(kept) == 10
    assert outbox.dropped("hard_example") == 20


def test_byte_accounting_survives_reopening(tmp_path: Path):
    outbox = Outbox(tmp_path / "outbox.db", 10_000)
    outbox.append("hard_example", b"x" * 300)
    outbox.close()
    assert Outbox(tmp_path / "outbox.db", 10_000).bytes_used == 300
