"""A writer process for the allocator concurrency tests: ``python -m tests.projector.concurrent_writer``.

Arguments: topic, writer id, number of documents, mode (``single`` = one ``project()`` per
document, ``batch`` = ``project_many`` batches of 10 that also carry a stale write, whose
watermark the sink must give back). Each process has its own database connection (DATABASE_URL).
Prints ``done <written>`` on success.
"""

import os
import sys

import django


def main() -> None:
    topic, writer, count, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "khala_project.settings")
    django.setup()
    from projector import sink
    from projector.sink import DocumentWrite

    written = 0
    if mode == "single":
        for i in range(count):
            result = sink.project(topic, f"w{writer}:{i}", 1, {"writer": writer, "i": i}, f"user:{writer}")
            written += result.written
    else:
        anchor = f"w{writer}:anchor"
        written += sink.project(topic, anchor, 1000, {"anchor": True}, f"user:{writer}").written
        for start in range(0, count - 1, 10):
            batch = [
                DocumentWrite(topic, f"w{writer}:{i}", 1, {"writer": writer, "i": i}, f"user:{writer}")
                for i in range(start, min(start + 10, count - 1))
            ]
            batch.insert(len(batch) // 2, DocumentWrite(topic, anchor, 1, {"stale": True}, f"user:{writer}"))
            written += sum(r.written for r in sink.project_many(batch))
    print(f"done {written}", flush=True)


if __name__ == "__main__":
    main()
