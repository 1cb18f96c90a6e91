"""The load benchmark (``crossfed bench deploy --nodes N``): many SuperNodes on loopback, nodes killed mid-run.

Split by job: :mod:`.cli` (the command, its report JSON; the full description), :mod:`.dataset`
(N platforms), :mod:`.kills` (kill schedule, rejoin rule), :mod:`.memory` (process memory and CPU),
:mod:`.driver` (the run, kills and restarts as rounds go by), :mod:`.rounds` (what the rounds say,
what was lost), :mod:`.report` (tables and plot).
"""
