"""The pieces of ``scripts/bench.py``, the benchmark of greenockam against raw gevent.

* :mod:`.common`: what every process shares (the message, its frames, the JSON line out).
* :mod:`.roles`: what the child processes run: the raw gevent echo server (the baseline) and
  the clients of each phase, raw and greenockam.
* :mod:`.codec`: the figures measured in-process with ``timeit`` (frame and payload codecs).
* :mod:`.runner`: the parent's side: starting the pinned processes, running every phase of every
  repetition, collecting each run's result.
* :mod:`.report`: the one table of figures, which drives aggregation, targets and rendering.
"""
