"""Public datasets read into the platform format: :mod:`~.movielens` (``crossfed prepare movielens``:
MovieLens 100K split into three platforms) and :mod:`~.tallrec` (the TALLRec movie split's rows and
prompts as examples). They import only :mod:`common`: no model code, no other ``simulations``
subpackage.
"""
