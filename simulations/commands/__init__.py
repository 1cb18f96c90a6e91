"""The command line's own parts beside :mod:`simulations.cli`: :mod:`~simulations.commands.console`
(what ``crossfed`` shows, one-line errors, quiet library logs, how one Ctrl-C ends a command) and
:mod:`~simulations.commands.use` (``crossfed recommend | score | export | serve``: thin wrappers over
:mod:`clients`). They import no other ``simulations`` subpackage, and import torch and Flower only
inside commands, so that ``crossfed --help`` stays light.
"""
