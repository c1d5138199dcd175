"""Training past one machine: rollout and evaluation workers as Ray actors, one learner (``marlctl train --ray``).

``settings.RayConfig`` is the ``[ray]`` config section (imports no Ray); ``algorithm.DistributedAlgorithm``
wraps the run's algorithm so its experience comes from ``pool.WorkerPool``'s actors (``worker.py``), through
``collect.py``'s asynchronous (value methods) or synchronous on-policy (MAPPO, TAD-PPO) discipline.
Ray is imported only when ``--ray`` is given.
"""
