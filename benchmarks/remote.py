"""Remote parquet over HTTP: rows/s against the same files read locally, with latency and failures.

    python benchmarks/remote.py                          # 4 files x 25k rows of ~2 KB, median of 2, ~7 min
    python benchmarks/remote.py --rows 32000 --out /tmp/remote.md   # ~3 min
    python benchmarks/remote.py --src /tmp/before        # lightning_stream imported from another folder
    python benchmarks/remote.py --cases ls-local,ls-50ms --repeats 3

Data: 4 parquet files, 100-row row groups, rows of ``id`` + ~2 KB of random letters (``--rows``
in all, ``--text-bytes``), written to a temporary folder and served by
``benchmarks/rangeserver.py`` on 127.0.0.1 with a latency before each answer (0, 20, 50, 100 ms),
one case with 2 % of the GET requests answered 503 (a transient error), one with a bandwidth cap
per response.

Loaders, one epoch each, 2 workers, shuffle on, batch 32, shuffle buffer 1000 rows, a light
batched transform (the length of each text):

- ``lightning_stream``: ``StreamingDataModule(train=Source(path="parquet", data_files=...),
  transform=..., num_workers=2, shuffle=True, buffer_size=1000).train_dataloader()``.
- plain recipe: ``datasets.load_dataset("parquet", data_files=..., split="train",
  streaming=True).shuffle(seed, buffer_size=1000).map(..., batched=True)`` in a torch
  ``DataLoader(num_workers=2, batch_size=32)``.

Each run is a fresh process (``remote.py --child``) while the server runs in this one (its
threads share the 2 cores with the loader, as a local proxy would). Measured per run:

- rows/s: the epoch's rows / seconds from building the loader to the last batch (start included);
  *vs local*: against the same loader reading the same files from local disk, in the same run;
  *after the first batch*: the same ratio with the time to the first batch left out (rows over
  the seconds from the first batch to the last: the epoch's pace once started);
- first batch: seconds from building the loader to the first batch;
- peak RSS: the largest sum of VmRSS over the run's process tree (main process + workers), read
  from /proc every 50 ms by this process (as ``memory.py`` reads it); *RSS vs local*: against
  the same loader on local files, in the same run (the issue asks for at most 1.2x);
- exactly once: every id of the epoch arrived, once; a run whose ids do not check is reported;
- GETs / 503s / wire: the server's counters (GET requests answered with data and failures
  injected, each run's; body bytes sent / size of the files, median).

A run that raises (or passes ``--timeout``) is reported as ``failed: <class>: <first line>``
instead of stopping the benchmark. Repeats are interleaved (every case once, then again); the
table gives the median of each figure.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
FILES, ROW_GROUP, BATCH, BUFFER, WORKERS, SEED = 4, 100, 32, 1000, 2, 0


def _load(name: str, file: str):
    """A module beside this file, loaded by path (``benchmarks/io.py`` would shadow the stdlib's ``io``)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(HERE, file))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- cases ----------------------------------------------------------------------------------------
# name -> (loader, server knobs or None for local files, label)
CASES = {
    "ls-local": ("lightning_stream", None, "local files"),
    "ls-0ms": ("lightning_stream", {"latency": 0.0}, "HTTP, 0 ms"),
    "ls-20ms": ("lightning_stream", {"latency": 0.020}, "HTTP, 20 ms"),
    "ls-50ms": ("lightning_stream", {"latency": 0.050}, "HTTP, 50 ms"),
    "ls-100ms": ("lightning_stream", {"latency": 0.100}, "HTTP, 100 ms"),
    "ls-50ms-503": ("lightning_stream", {"latency": 0.050, "fail_rate": 0.02}, "HTTP, 50 ms, 2 % 503"),
    "ls-20ms-50MBps": ("lightning_stream", {"latency": 0.020, "bandwidth": 50e6}, "HTTP, 20 ms, 50 MB/s per response"),
    "ls-50ms-cached": ("lightning_stream", {"latency": 0.050}, "HTTP, 50 ms, 2nd epoch, node cache"),
    "plain-local": ("plain recipe", None, "local files"),
    "plain-50ms": ("plain recipe", {"latency": 0.050}, "HTTP, 50 ms"),
    "plain-50ms-503": ("plain recipe", {"latency": 0.050, "fail_rate": 0.02}, "HTTP, 50 ms, 2 % 503"),
}


# -- data -----------------------------------------------------------------------------------------
def make_data(root: str, rows: int, text_bytes: int = 2000, row_group: int | None = ROW_GROUP) -> list[str]:
    """``FILES`` parquet files of ``rows`` rows in all (``id``, ``text``), row groups of ``row_group``
    rows; None: as ``datasets.Dataset.to_parquet`` writes them (row groups of ~100 MB of rows)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    step = row_group or 1
    per_file = max(step, rows // FILES // step * step)
    rng = np.random.default_rng(0)
    paths = []
    for f in range(FILES):
        ids = np.arange(f * per_file, (f + 1) * per_file, dtype=np.int64)
        letters = (rng.integers(0, 26, size=(per_file, text_bytes), dtype=np.uint8) + ord("a")).tobytes()
        text = pa.array([letters[i * text_bytes : (i + 1) * text_bytes].decode() for i in range(per_file)], pa.string())
        path = os.path.join(root, f"part-{f}.parquet")
        table = pa.table({"id": ids, "text": text})
        if row_group is None:
            import datasets

            datasets.Dataset(table).to_parquet(path)
        else:
            pq.write_table(table, path, row_group_size=row_group)
        paths.append(path)
    return paths


# -- one run, in a child process ------------------------------------------------------------------
def light(batch):
    """The light transform: one small column computed from the text."""
    return {"n": [len(t) for t in batch["text"]]}


def child(spec: dict) -> dict:
    import numpy as np

    files, loader_name, rows = spec["files"], spec["loader"], spec["rows"]
    if loader_name == "lightning_stream":
        sys.path.insert(0, spec.get("src") or os.path.dirname(HERE))  # this checkout's lightning_stream, or --src
        from lightning_stream import Source, StreamingDataModule

        t0 = time.perf_counter()
        remote = {"remote": spec["remote"]} if spec.get("remote") else {}  # a dict: Source makes the Remote
        if spec.get("cached"):  # Remote(cache_dir=...): epoch 0 fills the node's cache, epoch 1 is timed
            import tempfile

            remote = {"remote": {**remote.get("remote", {}), "cache_dir": tempfile.mkdtemp(prefix="ls-cache-")}}
        dm = StreamingDataModule(
            train=Source(path="parquet", data_files=files, **remote),
            transform=light,
            batch_size=BATCH,
            num_workers=WORKERS,
            shuffle=True,
            buffer_size=BUFFER,
            seed=SEED,
        )
        if spec.get("cached"):
            for _ in dm.train_dataloader():
                pass
            t0 = time.perf_counter()
        loader = dm.train_dataloader()
        if spec.get("cached"):
            loader.set_epoch(1)
        print(f"lightning_stream from {os.path.dirname(sys.modules['lightning_stream'].__file__)}", file=sys.stderr)
    else:
        import datasets
        import torch

        datasets.disable_progress_bars()
        t0 = time.perf_counter()
        ds = datasets.load_dataset("parquet", data_files=files, split="train", streaming=True)
        ds = ds.shuffle(seed=SEED, buffer_size=BUFFER).map(light, batched=True)
        loader, dm = torch.utils.data.DataLoader(ds, batch_size=BATCH, num_workers=WORKERS), None
    first = None
    ids = []
    for batch in loader:
        if first is None:
            first = time.perf_counter() - t0
        ids.append(np.asarray(batch["id"]))
    wall = time.perf_counter() - t0
    if dm is not None:
        dm.teardown("fit")
        if spec.get("cached"):
            import shutil

            shutil.rmtree(remote["remote"]["cache_dir"], ignore_errors=True)
    ids = np.concatenate(ids) if ids else np.zeros(0, np.int64)
    unique = np.unique(ids)
    missing = rows - int(np.count_nonzero((unique >= 0) & (unique < rows)))
    return {
        "rows": int(len(ids)),
        "wall": wall,
        "first": first,
        "missing": missing,
        "duplicated": int(len(ids) - len(unique)),
        "foreign": int(np.count_nonzero((unique < 0) | (unique >= rows))),
    }


def child_main(spec_json: str) -> None:
    try:
        out = child(json.loads(spec_json))
    except BaseException as err:  # reported, not raised: the benchmark goes on
        out = {"error": describe(err)}
    print("RESULT " + json.dumps(out), flush=True)
    os._exit(0)  # do not wait for workers a failed loader left behind (the parent kills the group)


def describe(err: BaseException) -> str:
    """``Class: first line``; for an error re-raised from a DataLoader worker, also the worker's own error line."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    text = f"{type(err).__name__}: {lines[0] if lines else ''}"
    chain, cause = [], err
    while cause is not None and len(chain) < 10:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    for cause in reversed(chain):  # torch re-raises a worker's error with its traceback: its last line is the error
        inner = [line.strip() for line in str(cause).strip().splitlines() if line.strip()]
        if any(line.startswith("Original Traceback") for line in inner):
            text += f" [in the worker: {inner[-1]}]"
            break
    text = re.sub(r"https?://127\.0\.0\.1:\d+", "<server>", text)
    text = re.sub(r"(<server>/[^,\s)]+)(,<server>/[^,\s)]+)+", r"\1,...", text)  # a list of the files' urls
    return text[:400]


# -- the parent: server, process tree, RSS --------------------------------------------------------
def run_one(name: str, spec: dict, data: str, timeout: float, memory) -> dict:
    loader, knobs, _ = CASES[name]
    server_mod = _load("lightning_stream_rangeserver", "rangeserver.py")
    names = sorted(os.listdir(data))
    size = sum(os.path.getsize(os.path.join(data, n)) for n in names)

    def go(files: list[str]) -> dict:
        args = json.dumps({**spec, "loader": loader, "files": files, "cached": name.endswith("-cached")})
        proc = subprocess.Popen(
            [sys.executable, __file__, "--child", args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        peak, deadline = 0.0, time.monotonic() + timeout
        import threading

        out: dict = {}

        def read():
            out["stdout"], out["stderr"] = proc.communicate()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        timed_out = False
        while reader.is_alive():
            tree, stack = [], [proc.pid]
            while stack:  # the process tree: the child, its workers, theirs
                pid = stack.pop()
                tree.append(pid)
                try:
                    stack += memory.children(pid)
                except (FileNotFoundError, ProcessLookupError):
                    pass
            peak = max(peak, sum(memory.rss_mb(p) for p in tree))
            if time.monotonic() > deadline:
                timed_out = True
                break
            reader.join(0.05)
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the run's session: workers left behind included
        except ProcessLookupError:
            pass
        reader.join()
        if timed_out:
            return {"error": f"timeout after {timeout:.0f} s"}
        lines = [line for line in (out.get("stdout") or "").splitlines() if line.startswith("RESULT ")]
        if not lines:
            tail = [line for line in (out.get("stderr") or "").splitlines() if line.strip()]
            return {"error": f"exit {proc.returncode}: {tail[-1] if tail else 'no output'}"[:300]}
        result = json.loads(lines[-1][len("RESULT ") :])
        result["rss"] = peak
        return result

    if knobs is None:
        return go([os.path.join(data, n) for n in names])
    with server_mod.RangeServer(data, seed=spec["seed"], **knobs) as server:
        result = go([f"{server.url}/{n}" for n in names])
        result.update(gets=sum(server.requests.values()), fails=server.failed, wire=sum(server.sent.values()) / size)
    return result


def summarize(name: str, results: list[dict], rows: int, local: dict) -> dict:
    ok = [r for r in results if "error" not in r]
    row = {"name": name, "runs": len(results)}
    if len(ok) < len(results):
        errors = [r["error"] for r in results if "error" in r]
        row["error"] = f"({len(errors)}/{len(results)} runs) {errors[0]}"
    checks = [r for r in ok if r["missing"] or r["duplicated"] or r["foreign"] or r["rows"] != rows]
    row["once"] = (
        "yes"
        if ok and not checks
        else (
            "; ".join(f"{r['rows']} rows, {r['missing']} missing, {r['duplicated']} duplicated" for r in checks)
            if checks
            else ""
        )
    )
    if ok:
        row["rps"] = statistics.median(rows / r["wall"] for r in ok)
        row["steady"] = statistics.median(rows / (r["wall"] - r["first"]) for r in ok if r["first"] is not None)
        row["first"] = statistics.median(r["first"] for r in ok if r["first"] is not None)
        row["rss"] = statistics.median(r["rss"] for r in ok)
    for key in ("gets", "fails"):  # counts: every run's, "14 / 15", since a median of 0 and 1 says neither
        values = [r[key] for r in results if key in r]
        if values:
            row[key] = " / ".join(f"{v:,}" for v in values) if len(set(values)) > 1 else f"{values[0]:,}"
    wires = [r["wire"] for r in results if "wire" in r]
    if wires:
        row["wire"] = statistics.median(wires)
    base = local.get(CASES[name][0])
    if "rps" in row and base and "rps" in base:
        row["vs"] = row["rps"] / base["rps"]
        row["steady_vs"] = row["steady"] / base["steady"]
    if "rss" in row and base and "rss" in base:
        row["rss_vs"] = row["rss"] / base["rss"]
    return row


def table(rows_: list[dict]) -> str:
    head = "| loader | source | rows/s | vs local (same loader) | after the first batch: vs local | first batch (s) | peak RSS, main + workers (MB) | RSS vs local | each row once | GETs | 503s injected | wire / data |"
    out = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in rows_:
        loader, _, label = CASES[r["name"]]
        cell = lambda key, fmt: format(r[key], fmt) if key in r else ""  # noqa: E731
        if "error" in r:
            rps = "failed: " + r["error"].replace("|", "/")
            if "rps" in r:
                rps += f" (ok runs: {r['rps']:,.0f})"
        else:
            rps = f"{r['rps']:,.0f}"
        wire = f"{r['wire']:.2f}x" if "wire" in r else ""
        out.append(
            f"| {loader} | {label} | {rps} | {cell('vs', '.2f') + ('x' if 'vs' in r else '')} | {cell('steady_vs', '.2f') + ('x' if 'steady_vs' in r else '')} | {cell('first', '.2f')} | "
            f"{cell('rss', ',.0f')} | {cell('rss_vs', '.2f') + ('x' if 'rss_vs' in r else '')} | {r.get('once', '')} | {r.get('gets', '')} | {r.get('fails', '')} | {wire} |"
        )
    return "\n".join(out)


def machine() -> str:
    import datasets
    import fsspec
    import pyarrow
    import torch

    try:
        import aiohttp

        aio = f", aiohttp {aiohttp.__version__}"
    except ImportError:
        aio = ""
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            mem = f", {int(f.readline().split()[1]) / 2**20:.0f} GB RAM"
    except OSError:
        pass
    return (
        f"{os.cpu_count()} CPU cores{mem}, Python {platform.python_version()}, torch {torch.__version__}, "
        f"datasets {datasets.__version__}, pyarrow {pyarrow.__version__}, fsspec {fsspec.__version__}{aio}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=100_000, help="rows in all, over 4 files (default 100000: ~200 MB)")
    p.add_argument("--text-bytes", type=int, default=2000)
    p.add_argument(
        "--row-group",
        default=str(ROW_GROUP),
        help=f"rows per parquet row group (default {ROW_GROUP}: ~200 KB), or "
        "'datasets': as datasets.Dataset.to_parquet writes them (~100 MB of rows: here one row group a file)",
    )
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of: {', '.join(CASES)}")
    p.add_argument("--timeout", type=float, default=300, help="seconds before a run is killed and reported failed")
    p.add_argument("--out", help="also write the table (markdown) here")
    p.add_argument(
        "--src",
        help="import lightning_stream from this folder instead of this checkout, e.g. "
        "`git archive <commit> lightning_stream | tar -x -C DIR` for a before/after run",
    )
    p.add_argument(
        "--remote", type=json.loads, help="Remote settings for lightning_stream, as JSON: '{\"backoff\": 0.1}'"
    )
    p.add_argument("--child", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        child_main(a.child)
        return
    cases = [c.strip() for c in a.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        p.error(f"unknown cases {unknown}; known: {', '.join(CASES)}")
    memory = _load("lightning_stream_memory_bench", "memory.py")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as root:
        import pyarrow.parquet as pq

        paths = make_data(root, a.rows, a.text_bytes, None if a.row_group == "datasets" else int(a.row_group))
        metas = [pq.ParquetFile(f).metadata for f in paths]
        rows = sum(m.num_rows for m in metas)
        size = sum(os.path.getsize(f) for f in paths)
        groups = sum(m.num_row_groups for m in metas)
        layout = f"row groups of {rows // groups:,} rows (~{size / groups / 1e6:.1f} MB){' as datasets writes them' if a.row_group == 'datasets' else ''}"
        print(f"data: {FILES} files, {rows:,} rows, {size / 1e6:.1f} MB, {layout}", file=sys.stderr)
        results: dict[str, list[dict]] = {c: [] for c in cases}
        for rep in range(a.repeats):
            for c in cases:
                t = time.perf_counter()
                r = run_one(
                    c,
                    {"rows": rows, "seed": rep, "src": a.src and os.path.abspath(a.src), "remote": a.remote},
                    root,
                    a.timeout,
                    memory,
                )
                results[c].append(r)
                shown = (
                    r.get("error")
                    or f"{rows / r['wall']:,.0f} rows/s, first batch {r['first']:.2f} s, {r['rss']:,.0f} MB"
                )
                print(
                    f"[{rep + 1}/{a.repeats}] {c}: {shown} ({time.perf_counter() - t:.1f} s)",
                    file=sys.stderr,
                    flush=True,
                )
    local: dict[str, dict] = {}
    for c in cases:
        if CASES[c][1] is None:
            local[CASES[c][0]] = summarize(c, results[c], rows, {})
    summary = [summarize(c, results[c], rows, local) for c in cases]
    src = os.path.abspath(a.src) if a.src else os.path.dirname(HERE)
    text = (
        f"{machine()}; lightning_stream from {src}; {FILES} files, {rows:,} rows of ~{a.text_bytes:,} B, {size / 1e6:.1f} MB, {layout}; "
        f"{WORKERS} workers, shuffle on (buffer {BUFFER}), batch {BATCH}; median of {a.repeats}; "
        f"{time.perf_counter() - start:.0f} s in all.\n\n" + table(summary) + "\n"
    )
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
