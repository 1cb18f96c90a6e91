"""Benchmarks that print a table (``crossfed bench secagg | train | scale | recommend | batch``;
``bench deploy`` lives in :mod:`deploy`): :mod:`~.secagg`, :mod:`~.train`, :mod:`~.scale` (with
:mod:`~.scale_flower`, its Flower engine), :mod:`~.recommend` and :mod:`~.batch`, each also runnable as
``python -m simulations.bench.<name>``; and the scripts of the long runs behind the README's
numbers: ``gpu_full.sh`` (the full comparison on one GPU) and ``quality_cpu.sh`` (the quality
evidence on a 2-core CPU). Inside ``simulations`` it may import :mod:`simulations.compare`,
:mod:`simulations.local`, :mod:`simulations.commands` and :mod:`simulations.datasets`; no other
subpackage imports it (the CLI mounts it).
"""
