"""Bad sources: a hub that does not answer, files that change or are cut short, files that are not
data, arguments that cannot work. Each ends in an error naming the culprit (file, line, column,
argument, source) and the fix, in bounded time, or in correct behaviour (issue #14)."""

import gzip
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import textwrap
import threading
import time

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import epoch_ids

from lightning_stream import Mix, Source, StateMismatchError, StreamingDataModule
from lightning_stream.loader import StreamingDataLoader


def loader(train, **kw) -> StreamingDataLoader:
    return StreamingDataModule(train=train, shuffle=False, batch_size=kw.pop("batch_size", 10), **kw).train_dataloader()


def write_jsonl(path, start: int, stop: int, opener=open) -> str:
    with opener(path, "wt") as f:
        for i in range(start, stop):
            f.write(json.dumps({"id": i, "text": f"row {i}"}) + "\n")
    return str(path)


def write_arrow(path, columns: dict) -> str:
    """An arrow stream file as ``datasets`` writes it (``save_to_disk``, ``map``'s cache)."""
    datasets.Dataset.from_dict(columns).map(lambda r: r, cache_file_name=str(path), load_from_cache_file=False)
    return str(path)


# -- 1. a hub that does not answer: bounded time, a clear error, SIGTERM heard -----------------------
class SilentServer:
    """Accepts connections on 127.0.0.1 and never answers (a black-holed proxy, a hung hub)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


@pytest.fixture
def silent_endpoint():
    server = SilentServer()
    yield f"http://127.0.0.1:{server.port}"
    server.close()


@pytest.fixture
def refused_endpoint():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there: every connection is refused
    return f"http://127.0.0.1:{port}"


OPEN_HUB_ID = textwrap.dedent(
    """
    import sys, time
    from lightning_stream import StreamingDataModule
    began = time.monotonic()
    try:
        StreamingDataModule(train="someone/some-dataset").train_dataloader()
    except Exception as err:
        print("ERROR", type(err).__name__, err)
        print(f"TOOK {time.monotonic() - began:.1f}")
        sys.exit(3)
    """
)


def run_hub(endpoint: str, **env) -> tuple[subprocess.CompletedProcess, float]:
    """The error of opening a hub id against ``endpoint``, and the seconds it took (imports aside)."""
    environ = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    environ.update(HF_ENDPOINT=endpoint, HF_HUB_DISABLE_TELEMETRY="1", **env)
    out = subprocess.run([sys.executable, "-c", OPEN_HUB_ID], env=environ, capture_output=True, text=True, timeout=90)
    took = float(out.stdout.split("TOOK ")[-1]) if "TOOK " in out.stdout else float("inf")
    return out, took


def test_hub_behind_a_silent_network_fails_in_bounded_time_naming_source_and_endpoint(silent_endpoint):
    out, took = run_hub(silent_endpoint)
    assert out.returncode == 3, out.stderr[-2000:]
    assert "ConnectionError" in out.stdout and "someone/some-dataset" in out.stdout and silent_endpoint in out.stdout
    assert "HF_HUB_OFFLINE" in out.stdout  # what to do
    assert took < 30, took


def test_no_network_fails_fast(refused_endpoint):
    out, took = run_hub(refused_endpoint)
    assert out.returncode == 3 and "did not answer" in out.stdout and "someone/some-dataset" in out.stdout, (
        out.stdout + out.stderr[-2000:]
    )
    assert took < 30, took


def test_offline_mode_asks_nothing_and_says_so(silent_endpoint, tmp_path):
    out, took = run_hub(silent_endpoint, HF_HUB_OFFLINE="1", HF_DATASETS_CACHE=str(tmp_path))
    assert out.returncode == 3 and "HF_HUB_OFFLINE is set" in out.stdout and "someone/some-dataset" in out.stdout, (
        out.stdout + out.stderr[-2000:]
    )
    assert took < 30, took


def test_sigterm_ends_a_wait_on_the_hub(silent_endpoint):
    # As under Lightning: a Python SIGTERM handler that only takes note. The wait must end anyway.
    script = "import signal; signal.signal(signal.SIGTERM, lambda *a: print('NOTED', flush=True))\n" + OPEN_HUB_ID
    environ = dict(os.environ, HF_ENDPOINT=silent_endpoint)
    environ.pop("HF_HUB_OFFLINE", None)
    proc = subprocess.Popen(
        [sys.executable, "-c", script], env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    time.sleep(8)  # imports done, waiting on the first try (10 s)
    proc.send_signal(signal.SIGTERM)
    began = time.monotonic()
    try:
        stdout, _ = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("SIGTERM did not end the wait on the hub")
    assert time.monotonic() - began < 5
    assert proc.returncode == 128 + signal.SIGTERM and "NOTED" in stdout, stdout


# -- 2. files that change: the fingerprint covers content, the glob is listed once ------------------
def state_after_one_batch(train, **kw) -> dict:
    dl = loader(train, **kw)
    it = iter(dl)
    next(it)
    state = dl.state_dict()
    dl.shutdown_workers()
    return state


@pytest.mark.parametrize("kind", ["parquet", "jsonl", "arrow"])
def test_shard_rewritten_with_same_name_and_row_count_is_refused_on_resume(tmp_path, kind):
    path = str(tmp_path / f"shard.{kind}")

    def write(offset: int) -> None:
        table = pa.table(
            {"id": list(range(offset, offset + 40)), "text": [f"row {i}" for i in range(offset, offset + 40)]}
        )
        if kind == "parquet":
            pq.write_table(table, path)
        elif kind == "jsonl":
            write_jsonl(path, offset, offset + 40)
        else:
            write_arrow(path, table.to_pydict())

    write(0)
    train = Source(path={"parquet": "parquet", "jsonl": "json", "arrow": "arrow"}[kind], data_files=path)
    state = state_after_one_batch(train)
    copy = tmp_path / "copy"  # the same bytes elsewhere (a node's local disk) resume
    copy.mkdir()
    shutil.copy(path, copy / os.path.basename(path))
    loader(Source(path=train.path, data_files=str(copy / os.path.basename(path)))).load_state_dict(state)
    write(1000)  # same name, same row count, other rows
    with pytest.raises(StateMismatchError, match="other data"):
        loader(train).load_state_dict(state)


def test_a_file_appearing_in_the_glob_mid_run_is_read_by_no_process(tmp_path):
    # Listed once in the main process: workers (not persistent: started again each epoch) read that list.
    for i in range(2):
        write_jsonl(tmp_path / f"part-{i}.jsonl", 100 * i, 100 * i + 100)
    dm = StreamingDataModule(
        train=Source(path="json", data_files=str(tmp_path / "part-*.jsonl")),
        batch_size=10,
        num_workers=2,
        shuffle=True,
        persistent_workers=False,
    )
    dl = dm.train_dataloader()
    first = epoch_ids(dl)
    write_jsonl(tmp_path / "part-2.jsonl", 200, 331)
    second = epoch_ids(dl, 1)
    assert sorted(first) == sorted(second) == list(range(200))


def test_arrow_glob_is_listed_once_for_spawned_workers(tmp_path):
    for i in range(2):
        write_arrow(tmp_path / f"p{i}.arrow", {"id": list(range(50 * i, 50 * i + 50))})
    opened = loader(Source(path="arrow", data_files=str(tmp_path / "p*.arrow")))
    dl = StreamingDataLoader(opened.dataset, num_workers=1, multiprocessing_context="spawn")
    write_arrow(tmp_path / "p2.arrow", {"id": list(range(100, 150))})
    assert sorted(epoch_ids(dl)) == list(range(100))


# -- 3. files cut short, which datasets would read short without a word ------------------------------
def test_webdataset_tar_cut_inside_a_member_is_named(tmp_path):
    import io

    tar_path = tmp_path / "shard-000.tar"
    with tarfile.open(tar_path, "w") as tar:
        for i in range(40):
            for ext, data in (("txt", f"text {i}".encode()), ("json", json.dumps({"id": i}).encode())):
                info = tarfile.TarInfo(f"{i:04d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    whole = tar_path.read_bytes()
    assert len(list(datasets.load_dataset("webdataset", data_files=str(tar_path), split="train", streaming=True))) == 40
    tar_path.write_bytes(whole[: len(whole) * 2 // 3 + 100])  # inside a member
    with pytest.raises(ValueError, match=r"tar file .*shard-000.tar is truncated"):
        loader(Source(path="webdataset", data_files=str(tar_path)))


def test_save_to_disk_arrow_cut_at_a_record_batch_boundary_is_named(tmp_path):
    folder = str(tmp_path / "disk")
    datasets.Dataset.from_dict({"id": list(range(2500))}).save_to_disk(folder)
    arrow = next(f for f in os.listdir(folder) if f.endswith(".arrow"))
    path = os.path.join(folder, arrow)
    with pa.memory_map(path) as source:  # keep the schema and the first record batches, whole
        reader = pa.ipc.open_stream(source)
        batches = [reader.read_next_batch() for _ in range(2)]
    sink = pa.BufferOutputStream()
    writer = pa.ipc.new_stream(sink, batches[0].schema)
    for batch in batches:
        writer.write_batch(batch)
    cut = sink.getvalue().to_pybytes()  # a stream without its end-of-stream marker: cut there
    assert datasets.load_from_disk.__module__  # datasets itself loads the short file without a word:
    with open(path, "wb") as f:
        f.write(cut)
    assert datasets.Dataset.from_file(path).num_rows < 2500
    with pytest.raises(ValueError, match=rf"arrow file .*{arrow} is truncated"):
        loader(folder)


def test_arrow_file_cut_inside_a_record_batch_is_named(tmp_path):
    folder = str(tmp_path / "disk")
    datasets.Dataset.from_dict({"id": list(range(2500))}).save_to_disk(folder)
    path = os.path.join(folder, next(f for f in os.listdir(folder) if f.endswith(".arrow")))
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) - 5000])
    with pytest.raises(ValueError, match=rf"arrow file .*{os.path.basename(path)} is truncated"):
        loader(folder)


def test_truncated_jsonl_gz_names_the_file(tmp_path):
    path = write_jsonl(tmp_path / "part.jsonl.gz", 0, 2000, opener=gzip.open)
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cannot read .*part.jsonl.gz .*(EOFError|Compressed file ended)"):
        epoch_ids(loader(Source(path="json", data_files=path)))


# -- 4. files that are not what they seem: each error names the file (and line, column) --------------
def test_zero_row_parquet_names_the_file(tmp_path):
    path = str(tmp_path / "nothing.parquet")
    pq.write_table(pa.table({"id": pa.array([], pa.int64())}), path)
    with pytest.raises(ValueError, match=r"nothing.parquet: 0 rows"):
        loader(path)


def test_malformed_jsonl_line_names_file_and_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    write_jsonl(path, 0, 60)
    lines = path.read_text().splitlines()
    lines[49] = '{"id": 49, "text": "row 49"'  # a missing brace on line 50
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"rows.jsonl .*line 50 is not JSON"):
        epoch_ids(loader(Source(path="json", data_files=str(path))))


def test_ragged_csv_row_names_the_file(tmp_path):
    path = tmp_path / "table.csv"
    path.write_text("id,text\n" + "".join(f"{i},row {i}\n" for i in range(30)) + "30,row 30,extra\n")
    with pytest.raises(ValueError, match=r"cannot read .*table.csv"):
        epoch_ids(loader(Source(path="csv", data_files=str(path))))


def test_folder_without_data_files_says_what_it_found(tmp_path):
    for name in ("model.pt", "optimizer.pt", "README.md"):
        (tmp_path / name).write_bytes(b"x")
    with pytest.raises(
        FileNotFoundError, match=r"no supported data files in folder .* \(found: \.pt \(2\), \.md \(1\)\)"
    ) as err:
        loader(str(tmp_path))
    assert "data_files" in str(err.value)


def test_mixed_parquet_schemas_name_the_column(tmp_path):
    pq.write_table(pa.table({"id": [1, 2], "text": ["a", "b"]}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"id": ["1", "2"], "text": ["a", "b"]}), tmp_path / "b.parquet")
    with pytest.raises(
        ValueError,
        match=r"b.parquet has a different schema .*column 'id' is int64 in .*a.parquet but string in .*b.parquet",
    ):
        loader(Source(path="parquet", data_files=str(tmp_path / "*.parquet")))


def test_mixed_arrow_schemas_name_the_column(tmp_path):
    write_arrow(tmp_path / "a.arrow", {"id": [1, 2]})
    write_arrow(tmp_path / "b.arrow", {"id": [1, 2], "label": [0, 1]})
    with pytest.raises(ValueError, match=r"column 'label' \(int64\) is only in .*b.arrow"):
        loader(Source(path="arrow", data_files=str(tmp_path / "*.arrow")))


# -- 5. arguments that cannot work fail where they are written ---------------------------------------
@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"num_shards": -2}, ValueError, r"Source\(num_shards=-2\): num_shards must be at least 1"),
        ({"num_shards": 2.5}, TypeError, r"num_shards must be an int"),
        ({"columns": []}, ValueError, r"Source\(columns=\[\]\): columns must be a non-empty list .*0 steps"),
        ({"columns": "text"}, TypeError, r"columns=\['text'\]"),
        ({"columns": ["id", "id"]}, ValueError, r"distinct"),
        ({"split": ""}, ValueError, r"Source\(split=''\)"),
        ({"data_files": 3}, TypeError, r"Source\(data_files=3\)"),
        ({"streaming": "yes"}, TypeError, r"Source\(streaming='yes'\)"),
        ({"load_kwargs": ["x"]}, TypeError, r"load_kwargs must be a dict"),
    ],
)
def test_source_arguments_are_checked_when_made(kwargs, error, match):
    with pytest.raises(error, match=match):
        Source(path="parquet", **kwargs)


def test_path_like_arguments_are_accepted(tmp_path, data_dir):
    from pathlib import Path

    source = Source(path="parquet", data_files=[Path(data_dir) / "one.parquet"])
    assert source.data_files == [os.path.join(data_dir, "one.parquet")]
    assert len(epoch_ids(loader(Source(path=Path(data_dir) / "disk")))) == 1000


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"sources": ["a.parquet"]}, ValueError, "at least two sources"),
        ({"sources": "a.parquet"}, TypeError, "must be a list"),
        ({"sources": ["a", "b"], "probabilities": [1.0]}, ValueError, "1 probabilities for 2 sources"),
        ({"sources": ["a", "b"], "probabilities": [1.0, float("nan")]}, ValueError, "finite, non-negative"),
        ({"sources": ["a", "b"], "stopping_strategy": "never"}, ValueError, "stopping_strategy"),
    ],
)
def test_mix_arguments_are_checked_when_made(kwargs, error, match):
    with pytest.raises(error, match=match):
        Mix(**kwargs)


def test_mix_with_an_empty_source_names_it(tmp_path, data_dir):
    empty = str(tmp_path / "empty")
    datasets.Dataset.from_dict({"id": pa.array([], pa.int64()), "text": pa.array([], pa.string())}).save_to_disk(empty)
    with pytest.raises(ValueError, match=r"empty: 0 rows"):
        loader(Mix(sources=[os.path.join(data_dir, "disk"), empty]))


def test_data_files_by_split_as_in_load_dataset(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", 0, 30)
    val = write_jsonl(tmp_path / "val.jsonl", 100, 110)
    files = {"train": train, "validation": [val]}
    assert sorted(epoch_ids(loader(Source(path="json", data_files=files)))) == list(range(30))
    assert sorted(epoch_ids(loader(Source(path="json", data_files=files, split="validation")))) == list(range(100, 110))
    with pytest.raises(ValueError, match=r"no files for split 'test'; the splits given are \['train', 'validation'\]"):
        Source(path="json", data_files=files, split="test")
