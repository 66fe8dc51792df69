"""Predict's decoding: input files read and cleaned by ingest's code, in order, ahead of the model."""
from __future__ import annotations

from collections import deque
from typing import Iterator

from ..data.ingest import FileOutcome, read_and_clean_file
from .progress import Unit

_PREFETCH = 64         # files decoded ahead of the model by the decode thread (workers=0); 0 = inline


def decoded_outcomes(items: Iterator[tuple[Unit, tuple | None]], workers: int) -> Iterator[tuple[Unit, FileOutcome | None]]:
    """Decode files in order (None marks the end of a unit): `workers` = 0 in one background thread that
    runs ahead of the model (cv2, the decoders and torch release the GIL, so decoding overlaps the forward);
    else a bounded window of worker processes."""
    if workers <= 0:
        decoded = ((unit, None if task is None else read_and_clean_file(task)) for unit, task in items)
        yield from (_prefetch(decoded, _PREFETCH) if _PREFETCH > 0 else decoded)
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    ex = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"))  # no fork under torch
    window: deque = deque()
    try:
        for unit, task in items:
            window.append((unit, None if task is None else ex.submit(read_and_clean_file, task)))
            while len(window) > 4 * workers:   # decoded frames wait in memory only this far ahead
                u, fut = window.popleft()
                yield u, None if fut is None else fut.result()
        while window:
            u, fut = window.popleft()
            yield u, None if fut is None else fut.result()
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


def _prefetch(it: Iterator, depth: int) -> Iterator:
    """Items of `it`, computed in a daemon thread at most `depth` ahead; its exceptions re-raised here."""
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=depth)
    stop, end = threading.Event(), object()

    def put(x) -> bool:
        while not stop.is_set():
            try:
                q.put(x, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            for x in it:
                if not put((x, None)):
                    return
        except BaseException as e:       # handed to the consumer
            put((end, e))
            return
        put((end, None))

    t = threading.Thread(target=run, name="predict-decode", daemon=True)
    t.start()
    try:
        while True:
            x, err = q.get()
            if x is end:
                if err is not None:
                    raise err
                return
            yield x
    finally:
        stop.set()
        t.join()
