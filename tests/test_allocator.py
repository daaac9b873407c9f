"""jaxdiff.execution.allocator: the CLIs re-run under mimalloc, once, never over a user's own choice."""

import json
import os
import subprocess
import sys

import pytest

from jaxdiff.execution import allocator

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="LD_PRELOAD is Linux's")

# Re-executes itself through relaunch_under_mimalloc and reports what the final process saw.
PROBE = """
import json, os, sys
from jaxdiff.execution import allocator
allocator.relaunch_under_mimalloc()
print(json.dumps({"active": allocator.active(), "argv": sys.argv[1:],
                  "ld_preload": os.environ.get("LD_PRELOAD", ""),
                  "purge": os.environ.get("MIMALLOC_PURGE_DELAY")}))
"""


def _probe(env_updates: dict[str, str]) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", allocator.OPT_OUT_ENV)}
    env = {k: v for k, v in env.items() if not k.startswith("MIMALLOC_")}
    env.update(env_updates)
    out = subprocess.run(
        [sys.executable, "-c", PROBE, "a", "--b=c"], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1, out.stdout  # the program ran once: no second re-execution
    return json.loads(lines[0])


@linux_only
def test_the_library_is_installed_with_jaxdiff():
    path = allocator.library_path()
    assert path is not None and os.path.basename(path) == "libmimalloc.so"


@linux_only
def test_relaunch_runs_the_same_command_under_mimalloc_once():
    res = _probe({})
    assert res["active"] is True
    assert res["argv"] == ["a", "--b=c"]
    assert res["ld_preload"] == allocator.library_path()
    assert res["purge"] == "-1"


@linux_only
def test_user_settings_win():
    res = _probe({"MIMALLOC_PURGE_DELAY": "25", "LD_PRELOAD": ""})
    assert res["active"] is True and res["purge"] == "25"
    off = _probe({allocator.OPT_OUT_ENV: "1"})
    assert off["active"] is False and off["ld_preload"] == "" and off["purge"] is None


@pytest.mark.parametrize(
    "preload, expected",
    [
        ("", None),
        ("/opt/lib/libfoo.so", None),
        ("/usr/lib/libtcmalloc_minimal.so.4", "/usr/lib/libtcmalloc_minimal.so.4"),
        ("/a/libfoo.so:/b/libjemalloc.so.2", "/b/libjemalloc.so.2"),
        ("/x/libmimalloc.so /y/libz.so", "/x/libmimalloc.so"),
    ],
)
def test_an_allocator_already_preloaded_is_detected(preload, expected):
    assert allocator.preloaded_allocator({"LD_PRELOAD": preload}) == expected


def test_another_preloaded_allocator_is_left_alone():
    env = {"LD_PRELOAD": "/usr/lib/libtcmalloc_minimal.so.4"}
    assert allocator.preload_environment(env) is None
    assert allocator.preload_environment({allocator.OPT_OUT_ENV: "yes"}) is None


@linux_only
def test_preload_keeps_other_preloaded_libraries():
    env = allocator.preload_environment({"LD_PRELOAD": "/opt/lib/libfoo.so", "PATH": "/bin"})
    assert env is not None
    assert env["LD_PRELOAD"] == f"{allocator.library_path()} /opt/lib/libfoo.so"
    assert env["PATH"] == "/bin" and env["MIMALLOC_PURGE_DELAY"] == "-1"
