"""A pytest plugin that makes SIGUSR1 write the stack of every thread, and the run goes on. The
interrupt scenario loads it into the runs it interrupts (`-p stackdump`) and sends SIGUSR1 to a run
still alive long after its signal; the soak (tests/soak.py) loads it into every pytest of a round
(PYTEST_PLUGINS) and sends SIGUSR1 to all of them when a round hangs. So a slow or hung exit shows
where it is.

The stacks go to a copy of the stderr the process started with, taken when the plugin loads (before
pytest's capture replaces file descriptor 2 with a temporary file that a hung run never shows)."""
import faulthandler
import os
import signal

faulthandler.register(signal.SIGUSR1, file=os.dup(2), all_threads=True, chain=False)
