"""Prometheus metrics of a training run (``marlctl train --metrics-port P``), local or on Ray workers.

``marl_train_env_steps_total{worker}`` (``worker="local"`` on the single-process path),
``marl_train_updates_total``, ``marl_train_policy_lag``, ``marl_train_episodes_dropped_total{reason}``,
``marl_train_worker_restarts_total``, ``marl_train_workers_alive``, ``marl_train_eval_return`` and
``marl_train_eval_win_rate`` (the last greedy evaluation). The run loop calls ``on_iteration`` and ``on_eval``;
the counters follow the run's own totals (a resumed run starts them at the checkpoint's values).
"""
from __future__ import annotations

from typing import Any

from marlctl.trainer.errors import ConfigValueError
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

DROPPED_PREFIX = "train/episodes_dropped/"


class TrainMetrics:
    """The ``marl_train_*`` series of one run in their own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.env_steps = Counter("marl_train_env_steps", "Env steps collected into training, by rollout worker",
                                 ["worker"], registry=r)
        self.updates = Counter("marl_train_updates", "Gradient updates of the learner", registry=r)
        self.policy_lag = Gauge("marl_train_policy_lag", "Policy versions between the learner and the last "
                                "accepted episodes", registry=r)
        self.dropped = Counter("marl_train_episodes_dropped", "Episodes collected but not trained on, by reason",
                               ["reason"], registry=r)
        self.restarts = Counter("marl_train_worker_restarts", "Rollout worker restarts", registry=r)
        self.workers_alive = Gauge("marl_train_workers_alive", "Rollout workers alive", registry=r)
        self.eval_return = Gauge("marl_train_eval_return", "Mean return of the last greedy evaluation", registry=r)
        self.eval_win_rate = Gauge("marl_train_eval_win_rate", "Win rate of the last greedy evaluation", registry=r)
        self._seen: dict[tuple[str, str], float] = {}
        self.server: Any = None

    @classmethod
    def serve(cls, port: int, run: Any = None, host: str = "0.0.0.0") -> TrainMetrics:
        """Metrics at ``http://host:port/metrics`` (port 0: a free one, ``.port``)."""
        metrics = cls()
        try:
            metrics.server, _thread = start_http_server(port, addr=host, registry=metrics.registry)
        except OSError as exc:
            raise ConfigValueError(f"--metrics-port {port}: cannot listen ({exc.strerror or exc}); pick a free port") from None
        if run is not None:
            metrics.on_iteration(run, None)
        return metrics

    @property
    def port(self) -> int:
        return int(self.server.server_port)

    def _follow(self, counter: Any, key: tuple[str, str], total: float) -> None:
        """Advance a counter to the run's own running ``total`` (counters only go up)."""
        delta = total - self._seen.get(key, 0.0)
        if delta > 0:
            counter.inc(delta)
            self._seen[key] = total

    def on_iteration(self, run: Any, stats: Any) -> None:
        del stats
        self._refresh(run)

    def _refresh(self, run: Any) -> None:
        """Follow the run's running totals (after every iteration, and after an eval: the end of a run settles
        the workers' last tasks, so a loss in its last seconds reaches the counters too)."""
        algo = run.algo
        per_worker = getattr(algo, "worker_env_steps", None)
        steps = per_worker() if callable(per_worker) else {"local": run.state.env_steps}
        for worker, total in steps.items():
            self._follow(self.env_steps.labels(worker=worker), ("steps", worker), float(total))
        self._follow(self.updates, ("updates", ""), float(run.state.updates))
        faults = getattr(algo, "fault_metrics", None)
        if callable(faults):
            f = faults()
            self.policy_lag.set(algo.policy_lag())
            self.workers_alive.set(f["train/workers_alive"])
            self._follow(self.restarts, ("restarts", ""), f["train/worker_restarts"])
            for key, total in f.items():
                if key.startswith(DROPPED_PREFIX):
                    reason = key[len(DROPPED_PREFIX):]
                    self._follow(self.dropped.labels(reason=reason), ("dropped", reason), total)

    def on_eval(self, run: Any) -> None:
        self._refresh(run)
        ev = run.last_eval
        if "eval/return" in ev:
            self.eval_return.set(ev["eval/return"])
        if "eval/win_rate" in ev:
            self.eval_win_rate.set(ev["eval/win_rate"])

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
