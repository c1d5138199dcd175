"""`marlctl deploy render|verify-model|fetch-model` and `marlctl health`: Kubernetes manifests and pod-side checks."""
from __future__ import annotations

from pathlib import Path

import typer
from marlctl.cli.common import console, err_console, handle_user_errors

deploy_app = typer.Typer(help="Kubernetes deployment of a team of agent services.", no_args_is_help=True)


@deploy_app.command("render")
@handle_user_errors
def render_cmd(
    model_dir: Path = typer.Argument(..., help="Exported model dir (manifest.json + agent_<i>.onnx), from `marlctl export`."),
    image: str = typer.Option(..., "--image", help="Agent service image (deploy/docker/Dockerfile.serve[-cuda])."),
    out: Path = typer.Option(Path("k8s"), "--out", help="Output dir: a kustomize base (must be new or empty, or --force)."),
    namespace: str = typer.Option("marl", "--namespace", help="Kubernetes namespace of the team."),
    replicas: int = typer.Option(1, "--replicas", help="Replicas per agent (the HPA's minimum)."),
    max_replicas: int = typer.Option(8, "--max-replicas", help="HPA maximum per agent."),
    gpu: bool = typer.Option(False, "--gpu", help="One nvidia.com/gpu per agent pod (needs a CUDA image)."),
    model_source: str = typer.Option("configmap", "--model-source", help="configmap | pvc | image | url."),
    model_url: str = typer.Option(None, "--model-url", help="http(s) URL of the model dir (with --model-source url)."),
    team: str = typer.Option(None, "--team", help="Team name (default: from the manifest's algorithm and env id)."),
    runner_image: str = typer.Option(None, "--runner-image", help="Runner Job image (default --image; SMAX/GRF need the train image)."),
    runner_env: str = typer.Option(None, "--runner-env", help="Env id the runner plays (default: the manifest's)."),
    episodes: int = typer.Option(100, "--episodes", help="Episodes the runner Job plays."),
    concurrency: int = typer.Option(4, "--concurrency", help="Episodes the runner Job plays at once."),
    pushgateway: str = typer.Option(None, "--pushgateway", help="Prometheus Pushgateway URL the runner Job pushes its "
                                    "final metrics to (http://host:9091)."),
    grpc_port: int = typer.Option(50051, "--grpc-port", help="Agent gRPC port (container and Service)."),
    metrics_port: int = typer.Option(9091, "--metrics-port", help="Agent Prometheus metrics port."),
    runner_metrics_port: int = typer.Option(9092, "--runner-metrics-port", help="Runner Prometheus metrics port."),
    max_episodes: int = typer.Option(1024, "--max-episodes", help="Live-episode bound per agent process."),
    cpu_request: str = typer.Option("500m", "--cpu-request", help="Agent container CPU request."),
    cpu_limit: str = typer.Option("1", "--cpu-limit", help="Agent container CPU limit."),
    memory_request: str = typer.Option("256Mi", "--memory-request", help="Agent container memory request."),
    memory_limit: str = typer.Option("1Gi", "--memory-limit", help="Agent container memory limit."),
    pvc_size: str = typer.Option("1Gi", "--pvc-size", help="Model PersistentVolumeClaim size (--model-source pvc)."),
    target_live_episodes: int = typer.Option(64, "--target-live-episodes", help="HPA target: live episodes per pod."),
    target_decision_p99: str = typer.Option("5m", "--target-decision-p99", help="HPA target: p99 decision seconds per pod, a quantity (5m = 5 ms)."),
    termination_grace: int = typer.Option(40, "--termination-grace", help="Pod termination grace seconds (preStop + drain)."),
    force: bool = typer.Option(False, "--force", help="Replace a non-empty --out dir."),
) -> None:
    """Render Deployments, Services, PDBs, HPAs, a runner Job and monitoring files for a team."""
    from marlctl.deploy.render import RenderConfig, render

    cfg = RenderConfig(
        image=image, namespace=namespace, replicas=replicas, max_replicas=max_replicas, gpu=gpu,
        model_source=model_source, model_url=model_url, team=team, runner_image=runner_image,
        runner_env=runner_env, runner_episodes=episodes, runner_concurrency=concurrency, pushgateway=pushgateway,
        grpc_port=grpc_port,
        metrics_port=metrics_port, runner_metrics_port=runner_metrics_port, max_episodes=max_episodes,
        cpu_request=cpu_request, cpu_limit=cpu_limit, memory_request=memory_request, memory_limit=memory_limit,
        pvc_size=pvc_size, target_live_episodes=target_live_episodes, target_decision_p99=target_decision_p99,
        termination_grace_seconds=termination_grace,
    )
    result = render(model_dir, out, cfg, force=force)
    from rich.table import Table

    m = result.model.manifest
    table = Table(title=f"team {result.team}: {m['algorithm']} on {m['env_id']} -> {result.out_dir}/", title_justify="left")
    for col in ("agent", "Deployment / Service", "model sha256", "replicas"):
        table.add_column(col)
    for i in range(result.model.n_agents):
        table.add_row(str(i), f"{result.team}-agent-{i}", result.model.agent_entry(i)["sha256"][:16] + "...",
                      f"{cfg.replicas}..{max(cfg.replicas, cfg.max_replicas)}")
    console.print(table)
    console.print(
        f"namespace {cfg.namespace}, image {cfg.image}{' (GPU)' if cfg.gpu else ''}, model via {cfg.model_source}, "
        f"manifest sha256 {result.model.manifest_sha256}, {len(result.files)} files", soft_wrap=True)
    for note in result.notes:
        err_console.print(f"[yellow]note:[/] {note}", soft_wrap=True, highlight=False)
    for line in (
        f"kubectl apply -k {result.out_dir}              # agents, services, PDBs, HPAs, runner Job, dashboard",
        f"kubectl apply -k {result.out_dir}/monitoring   # PodMonitor + PrometheusRule (Prometheus Operator)",
        f"{result.out_dir}/prometheus/                    # plain Prometheus: scrape job + rule file",
        f"{result.out_dir}/prometheus-adapter/values.yaml # custom metrics for the HPAs",
    ):
        console.print(f"  {line}", soft_wrap=True, highlight=False)


@deploy_app.command("render-train")
@handle_user_errors
def render_train_cmd(
    algo: str = typer.Option(..., "--algo", help="Algorithm (as `marlctl train --algo`)."),
    env: str = typer.Option(..., "--env", help="Environment id."),
    steps: int = typer.Option(..., "--steps", help="Training budget in env steps."),
    image: str = typer.Option(..., "--image", help="Training image (deploy/docker/Dockerfile.train[-cuda])."),
    workers: int = typer.Option(..., "--workers", help="Rollout workers: one worker pod and Ray actor each."),
    gpu: bool = typer.Option(False, "--gpu", help="One nvidia.com/gpu for the learner on the head (CUDA image)."),
    set_: list[str] = typer.Option([], "--set", help="Config override section.key=value (repeatable)."),
    seed: int = typer.Option(0, "--seed", help="Run seed."),
    out: Path = typer.Option(Path("k8s-train"), "--out", help="Output dir: a kustomize base (new or empty, or --force)."),
    namespace: str = typer.Option("marl", "--namespace", help="Kubernetes namespace."),
    name: str = typer.Option(None, "--name", help="RayJob and run dir name (default: from the algorithm and env id)."),
    envs_per_worker: int = typer.Option(0, "--envs-per-worker", help="Batched envs per worker (0 = env.num_envs)."),
    worker_cpus: float = typer.Option(1.0, "--worker-cpus", help="CPUs of each worker pod."),
    worker_memory: str = typer.Option("4Gi", "--worker-memory", help="Memory of each worker pod."),
    head_cpus: str = typer.Option("2", "--head-cpus", help="CPUs of the head pod (the learner)."),
    head_memory: str = typer.Option("8Gi", "--head-memory", help="Memory of the head pod (holds the replay buffer)."),
    runs_size: str = typer.Option("20Gi", "--runs-size", help="Size of the run-dir PersistentVolumeClaim."),
    storage_class: str = typer.Option(None, "--storage-class", help="StorageClass of the run-dir claim."),
    metrics_port: int = typer.Option(9100, "--metrics-port", help="Learner's Prometheus metrics port on the head."),
    backoff_limit: int = typer.Option(3, "--backoff-limit", help="Job retries; each resumes from the last checkpoint."),
    force: bool = typer.Option(False, "--force", help="Replace a non-empty --out dir."),
) -> None:
    """Render a KubeRay RayJob for one training run: the learner on the head, W rollout-worker pods, a run volume."""
    from marlctl.deploy.rayjob import TrainRenderConfig, render_train

    cfg = TrainRenderConfig(
        algo=algo, env_id=env, steps=steps, image=image, workers=workers, gpu=gpu, overrides=tuple(set_), seed=seed,
        namespace=namespace, name=name, envs_per_worker=envs_per_worker, worker_cpus=worker_cpus,
        worker_memory=worker_memory, head_cpus=head_cpus, head_memory=head_memory, runs_size=runs_size,
        storage_class=storage_class, metrics_port=metrics_port, backoff_limit=backoff_limit,
    )
    result = render_train(cfg, out, force=force)
    console.print(f"RayJob {result.name}: {algo} on {env}, {steps:,} env steps, {workers} rollout workers x "
                  f"{worker_cpus:g} CPU{', learner on a GPU' if gpu else ''} -> {result.out_dir}/ "
                  f"({len(result.files)} files)", soft_wrap=True, highlight=False)
    console.print(f"  entrypoint: {result.entrypoint}", soft_wrap=True, highlight=False)
    for line in (f"kubectl apply -k {result.out_dir}              # RayJob (KubeRay operator) + run volume + dashboard",
                 f"kubectl apply -k {result.out_dir}/monitoring   # PodMonitor of the learner's marl_train_* metrics"):
        console.print(f"  {line}", soft_wrap=True, highlight=False)


@deploy_app.command("verify-model")
@handle_user_errors
def verify_model_cmd(
    model_dir: Path = typer.Argument(..., help="Model dir to check."),
    agent: list[int] = typer.Option(None, "--agent", help="Agent index whose file to check (repeatable; default all)."),
    manifest_sha256: str = typer.Option(None, "--manifest-sha256", help="Refuse unless manifest.json has this sha256."),
) -> None:
    """Check a model dir's manifest and files against their sha256 (the pods' init container)."""
    from marlctl.deploy.model_check import load_model_dir

    info = load_model_dir(model_dir, agents=list(agent) if agent else None, manifest_sha256=manifest_sha256)
    checked = ", ".join(str(a) for a in agent) if agent else "all"
    console.print(f"model ok: {info.path} manifest sha256 {info.manifest_sha256}, agents checked: {checked}")


@deploy_app.command("fetch-model")
@handle_user_errors
def fetch_model_cmd(
    url: str = typer.Argument(..., help="http(s) URL of the model dir (manifest.json is fetched below it)."),
    dest: Path = typer.Argument(..., help="Local dir to write the model into."),
    manifest_sha256: str = typer.Option(..., "--manifest-sha256", help="sha256 the manifest must have."),
    agent: list[int] = typer.Option(None, "--agent", help="Agent index whose file to fetch (repeatable; default all)."),
    timeout: float = typer.Option(30.0, "--timeout", help="Seconds per HTTP request."),
) -> None:
    """Download a model dir pinned by its manifest's sha256 (the pods' init container for --model-source url)."""
    from marlctl.deploy.fetch import fetch_model

    info = fetch_model(url, dest, manifest_sha256, agents=list(agent) if agent else None, timeout_s=timeout)
    console.print(f"fetched {url} into {info.path} (manifest sha256 {info.manifest_sha256})")


@handle_user_errors
def health_cmd(
    address: str = typer.Argument(..., help="host:port of a gRPC server."),
    service: str = typer.Option("", "--service", help="Service name to check ('' = the whole server)."),
    timeout: float = typer.Option(3.0, "--timeout", help="Seconds to wait for the answer."),
) -> None:
    """Exit 0 when the server's grpc.health.v1 says SERVING, 1 otherwise (a container HEALTHCHECK)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        try:
            resp = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as exc:
            err_console.print(f"{address}: health check failed: {exc.code().name} {exc.details() or ''}".rstrip())
            raise typer.Exit(1) from None
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
    console.print(f"{address}: {status}")
    if resp.status != health_pb2.HealthCheckResponse.SERVING:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add `deploy` (render, render-train, verify-model, fetch-model) and `health` to the app."""
    app.add_typer(deploy_app, name="deploy")
    app.command("health")(health_cmd)
