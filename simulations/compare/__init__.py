"""``crossfed compare`` (does federation pay?) and ``crossfed tallrec``: :mod:`~.arms` (arms, size
presets, scenarios; no model code), :mod:`~.runner` (how one arm trains and scores),
:mod:`~.inprocess` (the federation loop with every platform in this process, the harness's engine),
:mod:`~.jobs` (units, their records on disk), :mod:`~.command` (the command: units, then the report),
:mod:`~.report` (report.json/md/png; ``python -m simulations.compare.report summary``),
:mod:`~.baselines` and :mod:`~.mf` (the no-training and matrix-factorisation baselines) and
:mod:`~.tallrec` (our scorer on the TALLRec split). Inside ``simulations`` it may import only
:mod:`simulations.datasets`. This file imports nothing: ``crossfed compare --help`` stays without
torch, and the harness never loads Flower or cryptography (``tests/unit/test_compare_imports.py``).
"""
