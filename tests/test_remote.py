"""Remote parquet over HTTP (fsspec): each row group crosses the wire for the one reader that owns it."""

import gc
import importlib.util
import os
import re
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import epoch_ids

from lightning_stream import Remote, RemoteReadError, Source, StreamingDataModule
from lightning_stream.testing import assert_resume_equivalent

# benchmarks/rangeserver.py, loaded by path: putting benchmarks/ on sys.path would let its io.py shadow the stdlib's.
_SERVER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "rangeserver.py")
_spec = importlib.util.spec_from_file_location("lightning_stream_rangeserver", _SERVER)
_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_module)
RangeServer = _module.RangeServer

FILES, ROWS, GROUP = 4, 5000, 100


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("remote"))
    for i in range(FILES):
        ids = list(range(i * ROWS, (i + 1) * ROWS))
        pq.write_table(
            pa.table({"id": ids, "text": [f"{j:06d} " + "x" * 300 for j in ids]}),
            os.path.join(root, f"part-{i}.parquet"),
            row_group_size=GROUP,
        )
    with RangeServer(root) as server:
        yield server, root


def test_each_row_group_is_fetched_once_by_its_reader(served):
    server, root = served
    urls = [f"{server.url}/part-{i}.parquet" for i in range(FILES)]
    server.reset()
    dm = StreamingDataModule(
        train=Source(path="parquet", data_files=urls), batch_size=32, num_workers=2, buffer_size=500, seed=1
    )
    ids = epoch_ids(dm)
    assert sorted(ids) == list(range(FILES * ROWS))
    # At most one range request per row group (read by the worker that owns its lane; neighbours
    # in a file may share one) and one per footer (read once, in the main process: the workers are
    # handed the parsed footers and the sizes, so they ask no HEAD). The 2 lanes share at most the
    # row group where they meet, and the last rows of each lane (the tail) are read by whichever
    # reader makes the last batch: a few row groups at most.
    lanes = 2
    assert sum(server.requests.values()) <= FILES * (ROWS // GROUP) + FILES + 3 * lanes
    assert sum(server.heads.values()) == FILES
    size = sum(os.path.getsize(os.path.join(root, f"part-{i}.parquet")) for i in range(FILES))
    sent = sum(server.sent.values())
    assert sent <= 1.2 * size, f"{sent:,} B crossed the wire for {size:,} B of files ({sent / size:.2f}x)"


def test_neighbouring_row_groups_share_a_request_up_to_max_request_bytes(served):
    """Read in file order (no shuffle), a reader's next row groups are neighbours in their file:
    they come in few requests, none larger than ``max_request_bytes`` (unless one row group is)."""
    server, root = served
    urls = [f"{server.url}/part-{i}.parquet" for i in range(FILES)]
    group_bytes = max(
        pq.ParquetFile(os.path.join(root, "part-0.parquet")).metadata.row_group(g).total_byte_size
        for g in range(ROWS // GROUP)
    )
    cap = 8 * group_bytes
    server.reset()
    src = Source(path="parquet", data_files=urls, remote=Remote(max_request_bytes=cap))
    dm = StreamingDataModule(train=src, batch_size=32, num_workers=2, buffer_size=500, shuffle=False)
    ids = epoch_ids(dm)
    assert sorted(ids) == list(range(FILES * ROWS))
    data_requests = sum(server.requests.values()) - FILES  # the footers
    assert data_requests <= FILES * (ROWS // GROUP) // 3, (
        f"{data_requests} requests for {FILES * ROWS // GROUP} row groups"
    )
    assert server.largest <= cap


def _store_with_budget(served, monkeypatch, groups: int):
    """A store over the served files whose read-ahead budget is ``groups`` of their largest row
    group (``read_ahead`` itself allows 32), and that row group's size in bytes."""
    from lightning_stream.stores import parquet
    from lightning_stream.stores.remote import row_group_span

    server, root = served
    meta = pq.ParquetFile(os.path.join(root, "part-0.parquet")).metadata
    group = max(end - start for start, end in (row_group_span(meta, g, None) for g in range(meta.num_row_groups)))
    monkeypatch.setattr(parquet, "_AHEAD_BYTES", groups * group)
    urls = [f"{server.url}/part-{i}.parquet" for i in range(FILES)]
    return parquet.ParquetStore(
        Source(path="parquet", data_files=urls, remote=Remote(read_ahead=32)), cache_rows=GROUP
    ), group


def test_the_bytes_fetched_ahead_are_bounded(served, monkeypatch):
    """However many row groups ``read_ahead`` allows, a reader holds at most the byte budget
    fetched ahead (huge row groups must not fill the memory); what it then reads is still right."""
    import numpy as np

    server, _ = served
    store, group = _store_with_budget(served, monkeypatch, groups=3)
    server.reset()
    store.read_ahead([np.arange(0, FILES * ROWS, 7)])  # rows of every row group
    time.sleep(0.5)
    assert 1 <= sum(server.requests.values()) and sum(server.sent.values()) <= 3 * group
    assert store.take(np.array([5, ROWS + 5])).column("id").to_pylist() == [5, ROWS + 5]


def test_read_ahead_asks_for_a_quarter_of_its_budget_at_a_time(served, monkeypatch):
    """The first row groups a reader needs do not share the link with its whole budget: each call
    asks for a quarter of the bytes at most, the next batch's call for the next quarter."""
    import numpy as np

    server, _ = served
    store, _ = _store_with_budget(served, monkeypatch, groups=8)
    plan = [np.arange(g * GROUP, g * GROUP + 3) for g in range(0, 40, 2)]  # row groups apart: a request each
    server.reset()
    asked = []
    for _ in range(5):
        store.read_ahead(plan)
        time.sleep(0.3)
        asked.append(sum(server.requests.values()))
    assert asked == [2, 4, 6, 8, 8]  # a quarter of the budget a call, until the budget is full


def test_row_groups_fetched_ahead_for_a_plan_left_behind_give_their_room_back(served):
    """An epoch left before its end leaves row groups fetched ahead that no batch will ask for:
    they must not hold the room of the next plan's row groups for ever."""
    import numpy as np

    from lightning_stream.stores.parquet import ParquetStore

    server, _ = served
    urls = [f"{server.url}/part-{i}.parquet" for i in range(FILES)]
    store = ParquetStore(Source(path="parquet", data_files=urls, remote=Remote(read_ahead=4)), cache_rows=GROUP)
    groups = lambda first: [np.arange(g * GROUP, g * GROUP + 3) for g in range(first, first + 4)]  # noqa: E731
    server.reset()
    store.read_ahead(groups(0))  # the plan of an epoch that stops here
    store.read_ahead(groups(20))  # the next plan: other row groups
    time.sleep(0.5)
    assert sum(server.requests.values()) == 2  # each plan's 4 neighbouring row groups in one request
    rows = np.array([20 * GROUP + 1, 23 * GROUP + 2])
    before = sum(server.requests.values())
    assert store.take(rows).column("id").to_pylist() == rows.tolist()
    assert sum(server.requests.values()) == before  # they were fetched ahead, not read now


def test_a_worker_forked_after_remote_reads_does_not_wait_on_its_parents_event_loop(served):
    """A forked child holds its parent's filesystem, whose session belongs to an event loop with no
    thread in the child; collecting it there would wait on that loop (fsspec: 1 s, a whole batch)."""
    import multiprocessing as mp

    from lightning_stream.stores.remote import open_remote

    server, _ = served
    remote = open_remote(f"{server.url}/part-0.parquet", Remote(), {})
    assert remote.read(4) == b"PAR1"

    def child(url, out):
        import fsspec

        nonlocal remote
        remote = None  # the parent's file and filesystem, dropped here
        fsspec.core.url_to_fs(url)  # a new filesystem: fsspec forgets the parent's instances
        began = time.monotonic()
        gc.collect()
        out.put(time.monotonic() - began)

    ctx = mp.get_context("fork")
    out = ctx.Queue()
    proc = ctx.Process(target=child, args=(server.url, out))
    proc.start()
    spent = out.get(timeout=20)
    proc.join(10)
    assert spent < 0.9  # fsspec would wait its whole 1 s timeout; generous for a loaded 2-core machine


def test_a_filesystem_without_an_event_loop_reads_ahead_with_threads():
    """``memory://`` (like ``hf://``) has no async side: its read-ahead runs on a thread pool."""
    import fsspec

    fs = fsspec.filesystem("memory")
    urls = []
    for i in range(2):
        with fs.open(f"/lightning_stream_test/part-{i}.parquet", "wb") as f:
            pq.write_table(pa.table({"id": list(range(i * 1000, (i + 1) * 1000))}), f, row_group_size=50)
        urls.append(f"memory://lightning_stream_test/part-{i}.parquet")
    try:
        dm = StreamingDataModule(
            train=Source(path="parquet", data_files=urls), batch_size=32, num_workers=0, buffer_size=200, seed=5
        )
        ids = epoch_ids(dm)
    finally:
        fs.rm("/lightning_stream_test", recursive=True)
    assert sorted(ids) == list(range(2000))


def remote_files(root):
    return [name for name in sorted(os.listdir(root)) if name.endswith(".parquet")]


def flaky_epoch(path: str, urls: list[str], seed: int) -> list[int]:
    """The ids of one shuffled epoch read by 2 workers from ``urls``, retried after 0.05 s."""
    src = Source(path=path, data_files=urls, remote=Remote(backoff=0.05))
    return epoch_ids(StreamingDataModule(train=src, batch_size=32, num_workers=2, buffer_size=500, seed=seed))


def test_transient_failures_and_latency_every_row_exactly_once(served):
    """50 ms per request, 2% of answers a 503 and 2% cut halfway: the reads are retried, and the
    epoch is whole."""
    _, root = served
    with RangeServer(root, latency=0.05, fail_rate=0.02, cut_rate=0.02, seed=3) as flaky:
        ids = flaky_epoch("parquet", [f"{flaky.url}/{name}" for name in remote_files(root)], seed=2)
        # the failures did happen (seed 3: 3 failures and 5 cuts in the first 200 draws), and were ridden over
        assert flaky.failed > 0 and sum(flaky.cuts.values()) > 0
    assert sorted(ids) == list(range(FILES * ROWS))


def test_a_json_stream_over_http_rides_over_503s_and_cut_answers(tmp_path):
    """json lines read by ``datasets`` (a stream): a failed or cut request reads the shard again,
    skipping the rows already given; every row once."""
    import json

    for i in range(FILES):
        with open(tmp_path / f"part-{i}.jsonl", "w") as f:
            f.writelines(json.dumps({"id": j, "text": "y" * 300}) + "\n" for j in range(i * 2000, (i + 1) * 2000))
    # Seed 84: the 3rd draw cuts an answer and the 4th fails one; every epoch makes more than 4 GETs.
    with RangeServer(str(tmp_path), fail_rate=0.02, cut_rate=0.02, seed=84) as flaky:
        ids = flaky_epoch("json", [f"{flaky.url}/part-{i}.jsonl" for i in range(FILES)], seed=1)
        assert flaky.failed > 0 and sum(flaky.cuts.values()) > 0
    assert sorted(ids) == list(range(FILES * 2000))


def test_resume_over_http_is_exact(served, tmp_path):
    server, _ = served
    urls = [f"{server.url}/part-{i}.parquet" for i in range(FILES)]

    def make():
        return StreamingDataModule(
            train=Source(path="parquet", data_files=urls), batch_size=64, num_workers=2, buffer_size=500, seed=4
        )

    report = assert_resume_equivalent(make, stop_at_step=150, tmp_path=str(tmp_path), max_epochs=2)
    assert len(report.after_resume) == 2 * (FILES * ROWS // 64 + 1) - 150


def test_a_missing_file_fails_at_once_naming_its_url(served):
    server, _ = served
    url = f"{server.url}/no-such-file.parquet"
    began = time.monotonic()
    with pytest.raises(ValueError, match="no-such-file.parquet"):
        StreamingDataModule(train=Source(path="parquet", data_files=[url])).train_dataloader()
    assert time.monotonic() - began < 5


def test_a_footer_comes_with_the_size_in_one_round_trip(tmp_path):
    """Opening a remote parquet file asks its size and fetches its end at the same time: with 0.4 s
    before each answer, a store over a small-footer file opens in one round trip (two before: the
    size, then the end), and its rows are right."""
    import fsspec.implementations.http  # noqa: F401 - imported here, not timed

    from lightning_stream.stores.parquet import ParquetStore

    pq.write_table(pa.table({"id": list(range(1000))}), str(tmp_path / "a.parquet"), row_group_size=100)
    with RangeServer(str(tmp_path), latency=0.4) as server:
        began = time.monotonic()
        store = ParquetStore(Source(path="parquet", data_files=[f"{server.url}/a.parquet"]))
        took = time.monotonic() - began
        assert store.num_rows == 1000 and store.take(pa.array([0, 999]).to_numpy()).column("id").to_pylist() == [0, 999]
        assert server.heads["a.parquet"] == 1
    assert took < 0.75, f"opening took {took:.2f} s: {took / 0.4:.1f} round trips of 0.4 s"


def test_large_footers_take_one_request_each_once_one_is_known(tmp_path):
    """Footers larger than the 64 KiB first fetched (many row groups, long string statistics) take
    a second request; once one such footer is known, the store fetches enough of the next files'
    ends to hold theirs: one request a file, but for the files opened at once before that."""
    from lightning_stream.stores import parquet

    n = parquet._OPENING_THREADS + 8
    for f in range(n):
        ids = list(range(f * 600, (f + 1) * 600))
        pq.write_table(
            pa.table({"id": ids, "text": [f"{j:06d}" + "y" * 300 for j in ids]}),
            str(tmp_path / f"p{f:02d}.parquet"),
            row_group_size=2,
        )
    footer = pq.ParquetFile(str(tmp_path / "p00.parquet")).metadata.serialized_size
    assert footer > parquet._TAIL_BYTES  # a footer larger than the first fetch
    with RangeServer(str(tmp_path)) as server:
        store = parquet.ParquetStore(
            Source(path="parquet", data_files=[f"{server.url}/p{f:02d}.parquet" for f in range(n)])
        )
        gets = sum(server.requests.values())
    assert store.num_rows == 600 * n
    assert gets <= n + parquet._OPENING_THREADS, f"{gets} requests for {n} footers of {footer:,} B"
    assert not any(remote.tail for remote in store._remotes.values())  # the ends fetched are let go once read


def test_a_server_that_never_answers_fails_in_bounded_time_naming_its_url(tmp_path):
    pq.write_table(pa.table({"id": [1, 2, 3]}), str(tmp_path / "a.parquet"))
    with RangeServer(str(tmp_path), silent=True) as silent:
        url = f"{silent.url}/a.parquet"
        src = Source(path="parquet", data_files=[url], remote=Remote(timeout=1, retries=2, backoff=0.1))
        began = time.monotonic()
        with pytest.raises(ValueError, match="a.parquet.*after 2 tries"):
            StreamingDataModule(train=src).train_dataloader()
        assert time.monotonic() - began < 10


def test_a_json_stream_from_a_server_that_never_answers_fails_in_bounded_time_naming_its_url(tmp_path):
    # datasets reads streams with aiohttp's 5-minute default; Remote.timeout bounds them too.
    (tmp_path / "a.jsonl").write_text("".join(f'{{"id": {i}}}\n' for i in range(10)))
    with RangeServer(str(tmp_path), silent=True) as silent:
        url = f"{silent.url}/a.jsonl"
        src = Source(path="json", data_files=[url], remote=Remote(timeout=1, retries=2, backoff=0.1))
        began = time.monotonic()
        with pytest.raises(RemoteReadError, match=rf"{re.escape(url)} did not answer"):
            StreamingDataModule(train=src).train_dataloader()
        assert time.monotonic() - began < 20


# -- the node-local cache (Remote.cache_dir) ---------------------------------------------------------
def test_a_node_cache_serves_later_epochs_and_other_processes_from_disk(served, tmp_path):
    server, _ = served
    urls = [f"{server.url}/part-{i}.parquet" for i in range(FILES)]
    src = Source(path="parquet", data_files=urls, remote=Remote(cache_dir=str(tmp_path / "cache")))
    dm = StreamingDataModule(train=src, batch_size=32, num_workers=2, buffer_size=500, seed=1)
    server.reset()
    loader = dm.train_dataloader()
    first = epoch_ids(loader, 0)
    fetched = sum(server.requests.values())
    assert sorted(first) == list(range(FILES * ROWS)) and fetched > FILES * ROWS // GROUP // 2
    server.reset()
    second = epoch_ids(loader, 1)
    assert sorted(second) == list(range(FILES * ROWS)) and second != first
    assert sum(server.requests.values()) == 0  # every row group from the node's disk
    # Another process of the node (a rank, the next run) reads the same cache: only its footers.
    other = StreamingDataModule(train=src, batch_size=32, num_workers=1, buffer_size=500, seed=2)
    server.reset()
    assert sorted(epoch_ids(other.train_dataloader(), 0)) == list(range(FILES * ROWS))
    assert sum(server.requests.values()) == FILES


def test_the_node_cache_stays_within_its_size_and_drops_entries_it_did_not_write(served, tmp_path):
    server, root = served
    urls = [f"{server.url}/part-{i}.parquet" for i in range(FILES)]
    size = sum(os.path.getsize(os.path.join(root, f"part-{i}.parquet")) for i in range(FILES))
    folder = tmp_path / "cache"
    limit = size // 4
    src = Source(path="parquet", data_files=urls, remote=Remote(cache_dir=str(folder), cache_bytes=limit))
    dm = StreamingDataModule(train=src, batch_size=32, num_workers=2, buffer_size=500, seed=1)
    loader = dm.train_dataloader()
    assert sorted(epoch_ids(loader, 0)) == list(range(FILES * ROWS))
    held = sum(f.stat().st_size for f in folder.iterdir())
    assert 0 < held <= limit + 2 * (limit // 16), (held, limit)  # 2 processes wrote, each trims
    for f in folder.iterdir():  # cut short (a disk fault, a hand edit): never trusted
        f.write_bytes(b"not a row group")
    server.reset()
    assert sorted(epoch_ids(loader, 1)) == list(range(FILES * ROWS))
    assert sum(server.requests.values()) >= FILES * ROWS // GROUP // 2
