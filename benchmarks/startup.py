"""Seconds from the interpreter's start to the first evaluation batch of xpe_fast.evaluate.

    python benchmarks/startup.py --adapter DIR --languages eng_Latn [evaluate's flags]

Runs the evaluate command as given and exits when it is about to compute its first batch,
printing the time on stderr. Run it twice with the same XPE_FAST_CACHE to see a second
command's start (the decoded embedded backbone read back from the cache), and with
XPE_FAST_CACHE=off for a start without the cache.
"""

import os
import sys
import time

t0 = time.time()

import xpe_fast.evaluate as cmd  # noqa: E402


def first_batch(*args, **kwargs):
    cache = os.environ.get("XPE_FAST_CACHE", "default")
    print(f"first batch at {time.time() - t0:.2f} s (XPE_FAST_CACHE={cache})", file=sys.stderr)
    os._exit(0)


cmd.evaluate_languages.__globals__["evaluate_encoded"] = first_batch
sys.exit(cmd.main(sys.argv[1:]))
