"""Tools on top of the federation, one subpackage per job; ``cli.py`` (``crossfed``) is the only module here.

- :mod:`simulations.cli`: the command line, which mounts every command by name; no module imports it.
- :mod:`simulations.commands`: the CLI's console (one-line errors, quiet logs, one Ctrl-C) and the
  commands that use a finished run (``recommend``, ``score``, ``export``, ``serve``).
- :mod:`simulations.local`: one federation on this machine through Flower (``crossfed simulate``,
  ``crossfed stop-local``).
- :mod:`simulations.compare`: ``crossfed compare`` (does federation pay?): arms, runner, jobs,
  report, baselines, the in-process engine, and ``crossfed tallrec``.
- :mod:`simulations.bench`: ``crossfed bench ...`` and the scripts of the full runs (``*.sh``).
- :mod:`simulations.datasets`: public datasets read into the platform format (MovieLens, TALLRec).

Who may import whom inside ``simulations`` is checked by ``tests/unit/test_layering.py``:
``datasets`` < ``compare`` < ``local`` < ``bench``, ``commands`` < ``bench``, ``cli`` above all.
"""
