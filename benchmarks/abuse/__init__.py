"""Pieces of the abuse benchmark (``benchmarks/bench_abuse.py``, issue 9).

* :mod:`.agentproc`: the agent as a real process, and samplers of its RSS, threads, open
  files and CPU time (from ``/proc``);
* :mod:`.victim`: the victim client (the real rpc backend, in a process of its own) and the
  new-client probe;
* :mod:`.clients`: plain gRPC and attached clients speaking agent.proto;
* :mod:`.h2raw`: raw HTTP/2 (the ``h2`` package) and attacks 3-6, reusable by tests;
* :mod:`.virtio_guest`: a raw virtio-mock guest (its own memory, rings and eventfds);
* :mod:`.attacks`: every attack of the issue, each returning what the attacker got.

Run ``python benchmarks/bench_abuse.py --help``.
"""
