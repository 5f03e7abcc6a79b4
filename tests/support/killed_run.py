"""Run the pipeline and kill this process with SIGKILL at a chosen call, as a crash or ``kill -9`` would: no
``finally`` block, no cleanup, files left as they are at that moment.

    python killed_run.py CONFIG.json [module:attribute before|after N [module:attribute]]
    python killed_run.py --serve

``attribute`` may be dotted (``RetrievalResult.save``). The optional last target scopes the count: only calls made
while it runs count, so "the second array written by ``RetrievalResult.save``" is one call whatever else writes
arrays before it.

``--serve`` imports the pipeline once (torch, transformers and PEFT take seconds) and then runs each request, one
JSON line on stdin, in a child forked from that warm process; it answers each with the child's exit status, one JSON
line on stdout, in the order of the requests. SIGTERM ends it and the run in progress.
"""

import functools
import importlib
import inspect
import json
import os
import signal
import sys
import traceback


def resolve(target: str):
    """``(owner, name, original)`` of ``module:attribute`` (dotted attributes name a class member)."""
    module_name, attribute = target.split(":")
    owner = importlib.import_module(module_name)
    *path, name = attribute.split(".")
    for part in path:
        owner = getattr(owner, part)
    return owner, name, inspect.getattr_static(owner, name)


def patch(target: str, make):
    """Replace ``target`` by ``make(function)``, keeping it a classmethod or staticmethod where it was one."""
    owner, name, original = resolve(target)
    if isinstance(original, (classmethod, staticmethod)):
        setattr(owner, name, type(original)(make(original.__func__)))
    else:
        setattr(owner, name, make(original))


def main(config_file: str, target: str = "", when: str = "before", calls: str = "1", inside: str = "") -> None:
    """Run the pipeline of ``config_file``, killed as asked (no ``target``: not killed)."""
    from reclora_pipeline.config import RunConfig
    from reclora_pipeline.pipeline import run_pipeline

    state = {"calls": 0, "depth": 0 if inside else 1}

    def killing(original):
        @functools.wraps(original)
        def killer(*args, **kwargs):
            if not state["depth"]:
                return original(*args, **kwargs)
            state["calls"] += 1
            if state["calls"] < int(calls):
                return original(*args, **kwargs)
            if when == "after":
                original(*args, **kwargs)
            for handle in args:  # whatever the call had written so far reaches the file, as the kernel would keep it
                if hasattr(handle, "flush"):
                    handle.flush()
            os.kill(os.getpid(), signal.SIGKILL)

        return killer

    def counting(original):
        @functools.wraps(original)
        def scope(*args, **kwargs):
            state["depth"] += 1
            try:
                return original(*args, **kwargs)
            finally:
                state["depth"] -= 1

        return scope

    if target:
        patch(target, killing)
    if inside:
        patch(inside, counting)
    with open(config_file) as handle:
        run_pipeline(RunConfig.from_dict(json.load(handle)))


def serve() -> None:
    import torch

    import peft_reclora  # noqa: F401  (registers RecLoRA with PEFT)
    import reclora_pipeline.pipeline  # noqa: F401

    running = {}

    def stop(signum, frame):  # the tests are over: the run in progress goes too
        if running:
            os.kill(running["child"], signal.SIGKILL)
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    for line in sys.stdin:
        request = json.loads(line)
        child = os.fork()
        if child == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            status = 1
            try:
                with open(request["log"], "w") as log:
                    os.dup2(log.fileno(), 1)
                    os.dup2(log.fileno(), 2)
                torch.set_num_threads(request["threads"])
                main(*request["args"])
                status = 0
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(status)
        running["child"] = child
        _, wait_status = os.waitpid(child, 0)
        running.clear()
        status = -os.WTERMSIG(wait_status) if os.WIFSIGNALED(wait_status) else os.WEXITSTATUS(wait_status)
        print(json.dumps({"id": request["id"], "status": status}), flush=True)


if __name__ == "__main__":
    if sys.argv[1:] == ["--serve"]:
        serve()
    else:
        main(*sys.argv[1:6])
