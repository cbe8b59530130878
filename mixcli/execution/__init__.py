"""How jobs are executed: the layer between the jobs of an experiment and the engine (which trains one job).

- :mod:`.experiment`: :func:`~.experiment.run_experiment`, a whole sweep of an experiment file in one call
  (what ``mixcli run`` does; for a notebook, a test or a script).
- :mod:`.executors`: the :class:`~.executors.Executor` contract, and the executor for ``run``'s options.
- :mod:`.claims`: a run is claimed (an OS lock released when its holder dies) before it trains, so any
  number of ``mixcli run`` processes share one output directory and train every run exactly once.
- :mod:`.worker`: run one job wherever it executes; every failure inside a job is recorded, never raised.
- :mod:`.local`: this process (``--jobs 1``) or a pool of persistent worker processes (``--jobs N``).
- :mod:`.ray_executor`: Ray tasks on a local instance or a cluster (``--executor ray``).
- :mod:`.sweep`: the scheduler (parents first, waits for runs held elsewhere, one outcome per job).
- :mod:`.display`: live bars on a terminal, one line per event in a log.
- :mod:`.status`: what ``mixcli status`` reports.
- :mod:`.stale`: finished runs that other plugin versions produced (``--rerun-stale``).
"""
