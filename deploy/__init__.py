"""Deploying crossfed on real machines: one SuperNode per platform, one SuperLink (Flower 1.42).

``certs``            a private CA, the SuperLink's TLS certificate, SuperNode authentication keys
``commands``         command lines and environments of flower-superlink / flower-supernode / the worker
``processes``        starting them (own session, appended log), waiting for them, stopping whole trees
``flwr_cli``         the ``flwr`` CLI as functions: named connections, node registration, runs
``federation``       ``Federation``: real processes on loopback for tests, benchmarks and fault drills
``errors``           ``DeployError`` and the plaintext warning
``worker``           the warm ClientApp worker (``--isolation process``): one long-lived process per
                     SuperNode, so torch, the model and the tokenised data load once, not per message
``supernode_entry``  ``flower-supernode`` with short idle polling (Flower's is a hard-coded 3 s)
``provision``        start-up kits: one folder per platform and one for the coordinator
``book``             crossfed's notes beside Flower's (node id -> platform name, runs submitted)
``operate``          ``deploy submit`` exit codes and ``deploy status``: what became of a run
``bench``            round time: simulation vs deployment (cold Flower defaults vs warm worker)
``loadbench``        the load benchmark: many SuperNodes on loopback, nodes killed mid-run
``cli``              ``crossfed deploy ...`` subcommands (``add_deploy_parser``)
"""
