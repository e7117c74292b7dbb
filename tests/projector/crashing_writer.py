"""A writer that dies right after its authority COMMIT: ``python -m tests.projector.crashing_writer``.

Each argument is one command, run in a forked child that exits (``os._exit``) the moment Django
has committed the command's transaction, before any ``on_commit`` callback (the outbox fast path)
can run: what an OOM kill or a deploy restart between COMMIT and projection looks like.

Commands: ``create_run:<user_id>:<thread_id>``, ``run_event:<user_id>:<run_id>:<event_type>``,
``create_worker:<user_id>:<adapter>``, ``worker_event:<user_id>:<worker_id>:<event_type>``.
The parent prints ``crashed <command>`` per child that died that way (exit status 17) and exits
non-zero if any child did anything else.
"""

import os
import sys

import django

CRASH_STATUS = 17


def run_command(spec: str) -> None:
    from django.contrib.auth import get_user_model
    from django.db.backends.base.base import BaseDatabaseWrapper

    from runtime import commands

    def die_before_callbacks(self):  # Django calls this right after COMMIT returned
        os._exit(CRASH_STATUS)

    BaseDatabaseWrapper.run_and_clear_commit_hooks = die_before_callbacks
    kind, user_id, *rest = spec.split(":")
    user = get_user_model().objects.get(id=int(user_id))
    if kind == "create_run":
        commands.create_run(user, thread_id=rest[0])
    elif kind == "run_event":
        commands.append_run_event(rest[0], user, rest[1], {"reason_class": "ok"} if rest[1] == "run.completed" else {})
    elif kind == "create_worker":
        commands.create_codex_worker(user, adapter=rest[0])
    elif kind == "worker_event":
        commands.append_worker_event(rest[0], user, rest[1], {})
    else:
        raise SystemExit(f"unknown command {spec!r}")
    os._exit(3)  # reached only if no commit happened


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "khala_project.settings")
    django.setup()
    from django.db import connection

    failed = False
    for spec in sys.argv[1:]:
        connection.close()  # the child opens its own connection
        pid = os.fork()
        if pid == 0:
            try:
                run_command(spec)
            except BaseException as exc:  # noqa: BLE001 - report anything, then die distinctly
                print(f"error {spec}: {exc!r}", flush=True)
                os._exit(4)
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) == CRASH_STATUS:
            print(f"crashed {spec}", flush=True)
        else:
            failed = True
            print(f"unexpected exit {os.waitstatus_to_exitcode(status)} for {spec}", flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
