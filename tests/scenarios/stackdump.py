"""A pytest plugin the interrupt scenario loads into the runs it interrupts (`-p stackdump`): SIGUSR1
makes Python write the stack of every thread into the run's log, and the run goes on. The scenario
sends it to a run that is still alive long after its signal, so a slow or hung exit shows where it is."""
import faulthandler
import signal
import sys

faulthandler.register(signal.SIGUSR1, file=sys.__stderr__, all_threads=True, chain=False)
