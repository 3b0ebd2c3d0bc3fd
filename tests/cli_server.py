"""A fork server for the test suite's ``run_cli``: it imports kisstore and its heavy dependencies
once, computes nothing, and forks one child per command, so that each of the suite's several
hundred command-line runs is a real separate process (its own exit code, environment, working
directory, standard streams and SIGKILL) without a fresh interpreter's start and imports.

The pytest process itself cannot be forked: once torch has run a multi-threaded operation, a
forked child hangs in its first one (GNU OpenMP's thread pool does not survive ``fork``). This
process never runs one, so its children start clean, as the kill harness's do.

Protocol: one JSON request per line on stdin, ``{"argv", "env", "cwd", "stdout", "stderr",
"timeout"}`` (the two streams are file paths the child writes), answered by one JSON line
``{"rc": N}`` on the file descriptor named on the command line (N negative: killed by signal -N).
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import sys
import traceback

# read by libraries when they are imported, so a run that sets one of these needs a fresh
# interpreter (run_cli falls back to a plain subprocess)
IMPORT_TIME_ENV = ("HF_", "HUGGINGFACE_", "TRANSFORMERS_", "TORCH_HOME", "OMP_", "MKL_", "PYTHONPATH",
                   "PYTHONHASHSEED", "XDG_CACHE_HOME", "DASK_", "KISSTORE_WORDNET_DIR", "LD_")


def preload() -> None:
    """Import everything a command uses, and use transformers' lazily imported parts once."""
    import gc

    import numpy  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401
    import transformers.core_model_loading  # noqa: F401
    import transformers.models.gpt2.modeling_gpt2  # noqa: F401
    import transformers.models.gpt_neox.modeling_gpt_neox  # noqa: F401
    import transformers.models.gptj.modeling_gptj  # noqa: F401
    import transformers.models.llama.modeling_llama  # noqa: F401
    import xarray  # noqa: F401
    import zarr  # noqa: F401
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer  # noqa: F401

    import kisstore.analysis  # noqa: F401
    import kisstore.edit.run  # noqa: F401
    import kisstore.extract.pipeline  # noqa: F401
    import kisstore.interop.rome_import  # noqa: F401
    import kisstore.store.copy  # noqa: F401
    import kisstore_cli.main  # noqa: F401

    for optional in ("s3fs", "dask.distributed"):
        try:
            __import__(optional)
        except ImportError:
            pass
    gc.collect()
    gc.freeze()  # a child's gc.collect() skips what was loaded here


def _child(req: dict) -> None:
    """In the forked child: become the command and exit with its code."""
    code = 1
    try:
        for fd, path in ((1, req["stdout"]), (2, req["stderr"])):
            f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(f, fd)
            os.close(f)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL if sig != signal.SIGINT else signal.default_int_handler)
        signal.alarm(int(req.get("timeout") or 600))  # a hung command dies by SIGALRM, as a timed-out one
        from kisstore_cli.main import cli

        sys.argv = ["kisstore", *req["argv"]]
        cli.main(args=list(req["argv"]), prog_name="kisstore")
        code = 0
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            code = e.code or 0
        else:  # as the interpreter does: the message on stderr, status 1
            print(e.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        try:
            atexit._run_exitfuncs()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def main(reply_fd: int) -> None:
    preload()
    reply = os.fdopen(reply_fd, "w", buffering=1)
    for line in sys.stdin:
        req = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(req)
        _, status = os.waitpid(pid, 0)
        reply.write(json.dumps({"rc": os.waitstatus_to_exitcode(status)}) + "\n")


if __name__ == "__main__":
    main(int(sys.argv[1]))
