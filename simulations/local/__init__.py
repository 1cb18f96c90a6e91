"""One federation on this machine through Flower: :mod:`~simulations.local.simulate` (``crossfed
simulate``, Flower's simulation engine on Ray, and its optional local-only baseline) and
:mod:`~simulations.local.flwr_daemons` (``crossfed stop-local``: the daemons ``flwr run`` leaves
behind). Inside ``simulations`` it may import :mod:`simulations.compare` (the baseline's arm runner
and the rounds plot) and :mod:`simulations.datasets`, nothing else.
"""
