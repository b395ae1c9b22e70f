"""`taudis pipeline`: compile the pipelines, run one locally, submit a run, create a recurring run.

    taudis pipeline compile --pipeline round --strategy taudis --registry europe-docker.pkg.dev/p/r --out round.yaml
    taudis pipeline run-local round.yaml --pipeline-root runs/kfp -p campaign_uri=runs/c ...
    taudis pipeline submit round.yaml --host https://kfp.example --pipeline-root gs://b/kfp -p ...
    taudis pipeline schedule round.yaml --host ... --cron "0 0 6 * * 1" -p ...
    taudis pipeline submit round.yaml --target vertex --project P --location europe-west4 \
        --pipeline-root gs://b/kfp -p ...

The registry of the steps' images is bound when compiling (--registry, else TAUDIS_IMAGE_REGISTRY;
one of them is required for the kubernetes and vertex targets). Run parameters (``-p NAME=VALUE``)
are typed by the compiled pipeline's declared inputs and checked before anything is sent or run.
A recurring run always runs one round at a time (rounds of one campaign must not overlap: each
reads the ledger the previous one wrote) and never catches up (a missed week is one round later,
not a burst of rounds).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from taudis_kfp.pipelines.platform import TARGETS

PIPELINES = ("round", "campaign")
# Where submit and schedule send a package: a KFP endpoint (on Kubernetes) or Vertex AI Pipelines.
SUBMIT_TARGETS = ("kubernetes", "vertex")
RUNNERS = ("subprocess", "docker")
# Compiled-pipeline parameter types -> Python converters.
_CONVERTERS = {
    "NUMBER_INTEGER": int,
    "NUMBER_DOUBLE": float,
    "STRING": str,
    "BOOLEAN": lambda v: v.lower() in ("1", "true", "yes"),
    "LIST": json.loads,
    "STRUCT": json.loads,
}


def build_pipeline(pipeline: str, strategy: str, *, rounds: int = 3, num_shards: int = 1, target: str = "kubernetes"):
    """The pipeline function for the compile-time choices."""
    from taudis.select import STRATEGIES

    if strategy not in STRATEGIES:
        raise ValueError(f"strategy {strategy!r} is not one of {', '.join(STRATEGIES)}")
    if pipeline == "round":
        from taudis_kfp.pipelines.round import build_round_pipeline

        return build_round_pipeline(strategy, num_shards=num_shards, target=target)
    if pipeline == "campaign":
        from taudis_kfp.pipelines.campaign import build_campaign_pipeline

        return build_campaign_pipeline(strategy, rounds=rounds, num_shards=num_shards, target=target)
    raise ValueError(f"pipeline {pipeline!r} is not one of {', '.join(PIPELINES)}")


def compile_pipeline(
    out: str | Path,
    pipeline: str,
    strategy: str,
    *,
    registry: str | None = None,
    portable_numerics: bool = False,
    **options: Any,
) -> Path:
    """Compile to a KFP v2 YAML package whose steps run the images of ``registry``; returns its path.

    Args:
        registry: where the images live (see taudis_kfp.components.images.resolve_registry):
            required, here or in TAUDIS_IMAGE_REGISTRY, for the kubernetes and vertex targets.
        portable_numerics: the model steps run on CPU kernels every x86-64 machine with AVX2
            shares (taudis.model.numerics), wherever the package runs: their containers' own
            environment says so, not the one the package is started from.
        options: build_pipeline's (rounds, num_shards, target).

    Raises:
        ValueError: no registry for a cluster target, or a bad pipeline option.
    """
    from kfp import compiler

    from taudis.model import numerics
    from taudis_kfp.components.images import bind_images, resolve_registry, set_model_environment

    images = resolve_registry(registry, options.get("target", "kubernetes"))
    func = build_pipeline(pipeline, strategy, **options)
    executors = func.pipeline_spec.deployment_spec.fields["executors"].struct_value.fields
    if portable_numerics:
        set_model_environment(executors, numerics.portable_environment())
    bind_images(executors, images)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(func, str(out))
    return out


def pipeline_spec(package: str | Path) -> dict[str, Any]:
    """The pipeline spec document of a compiled package (the platform spec, if any, follows it)."""
    with open(package) as stream:
        return next(iter(yaml.safe_load_all(stream)))


def typed_arguments(package: str | Path, params: Sequence[str] | Mapping[str, Any]) -> dict[str, Any]:
    """Check run parameters against the package's declared inputs and convert them to their types.

    Raises:
        ValueError: an unknown name, a value of the wrong type, a required input missing, or a
            selection parameter out of range (budget, alpha >= beta >= 1, sigma, metric, ...).
    """
    spec = pipeline_spec(package)
    declared = spec["root"]["inputDefinitions"]["parameters"]
    pairs = params.items() if isinstance(params, Mapping) else (_split(p) for p in params)
    arguments: dict[str, Any] = {}
    for name, value in pairs:
        if name not in declared:
            raise ValueError(f"{package}: the pipeline has no parameter {name!r} (it has {', '.join(declared)})")
        kind = declared[name]["parameterType"]
        try:
            arguments[name] = _CONVERTERS[kind](value) if isinstance(value, str) else value
        except ValueError as err:
            raise ValueError(f"parameter {name}={value!r} is not a {kind}: {err}") from err
    missing = [n for n, d in declared.items() if n not in arguments and not d.get("isOptional")]
    if missing:
        raise ValueError(f"{package}: missing required parameter(s) {', '.join(missing)}")
    _check_selection_parameters(spec, arguments)
    return arguments


def run_local(
    package: str | Path,
    arguments: Mapping[str, Any],
    pipeline_root: str | Path,
    *,
    runner: str = "subprocess",
    container_args: Mapping[str, Any] | None = None,
) -> Any:
    """Run a compiled package on this machine with kfp.local.

    Args:
        runner: "subprocess" (each step a subprocess of this Python) or "docker" (each step in its
            image, through the Docker API at DOCKER_HOST: Docker, or podman's compatible socket).
        container_args: extra arguments of docker's ``containers.run`` for every step (docker
            runner only). By default the steps run as the caller's uid and gid, so that the
            pipeline root, which kfp bind-mounts at the same path, is writable and its files
            stay the caller's.
    """
    from kfp import components, local

    if runner not in RUNNERS:
        raise ValueError(f"runner {runner!r} is not one of {', '.join(RUNNERS)}")
    # Locally the steps' resource requests are not used, and under the subprocess runner neither
    # are their images: kfp's warnings about that say nothing new.
    warnings.filterwarnings("ignore", message=".*have no effect in the current local runner.*")
    warnings.filterwarnings("ignore", message=".*custom or non-Python base image.*")
    root = Path(pipeline_root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    if runner == "docker":
        settings = {"user": f"{os.getuid()}:{os.getgid()}", **(container_args or {})}
        local.init(runner=local.DockerRunner(**settings), pipeline_root=str(root))
    else:
        local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root))
    return components.load_component_from_file(str(package))(**arguments)


def submit_run(
    host: str,
    package: str | Path,
    arguments: Mapping[str, Any],
    *,
    pipeline_root: str,
    experiment: str,
    run_name: str | None = None,
    namespace: str | None = None,
    service_account: str | None = None,
) -> str:
    """Submit one run of a compiled package to a KFP endpoint; returns the run id.

    Args:
        service_account: the Kubernetes service account the run's pods use (e.g. taudis-runner
            from manifests/, bound to a Google service account); None: KFP's default.
    """
    _check_target(package, "kubernetes")
    client = _client(host, namespace)
    result = client.create_run_from_pipeline_package(
        str(package),
        arguments=dict(arguments),
        run_name=run_name,
        experiment_name=experiment,
        pipeline_root=pipeline_root,
        namespace=namespace,
        service_account=service_account,
    )
    return str(result.run_id)


def schedule_runs(
    host: str,
    package: str | Path,
    arguments: Mapping[str, Any],
    *,
    cron: str,
    pipeline_root: str,
    experiment: str,
    name: str,
    namespace: str | None = None,
    service_account: str | None = None,
) -> str:
    """Create a recurring run (cron, one run at a time, no catch-up); returns its id."""
    _check_target(package, "kubernetes")
    client = _client(host, namespace)
    experiment_id = client.create_experiment(experiment, namespace=namespace).experiment_id
    recurring = client.create_recurring_run(
        experiment_id=experiment_id,
        job_name=name,
        cron_expression=cron,
        max_concurrency=1,
        no_catchup=True,
        params=dict(arguments),
        pipeline_package_path=str(package),
        pipeline_root=pipeline_root,
        enabled=True,
        service_account=service_account,
    )
    return str(recurring.recurring_run_id)


def _check_target(package: str | Path, wanted: str) -> None:
    """Refuse a package compiled for another platform (its GPU requests would not mean a GPU there)."""
    from taudis_kfp.pipelines.platform import package_target

    with open(package) as stream:
        target = package_target(list(yaml.safe_load_all(stream)))
    if target != wanted:
        raise ValueError(f"{package} was compiled for target {target!r}; compile it with --target {wanted}")


def _client(host: str, namespace: str | None):
    import kfp

    return kfp.Client(host=host, namespace=namespace or "kubeflow")


def _split(param: str) -> tuple[str, str]:
    name, sep, value = param.partition("=")
    if not sep or not name:
        raise ValueError(f"parameter {param!r} is not NAME=VALUE")
    return name, value


def _default(declaration: dict[str, Any]) -> Any:
    value = declaration.get("defaultValue")
    # Defaults come back from the YAML as JSON numbers: an integer default of 10 reads as 10.0.
    return int(value) if declaration["parameterType"] == "NUMBER_INTEGER" and value is not None else value


def _check_selection_parameters(spec: dict[str, Any], arguments: Mapping[str, Any]) -> None:
    from taudis.campaign import validate_round_parameters

    declared = spec["root"]["inputDefinitions"]["parameters"]
    value = {name: arguments.get(name, _default(declaration)) for name, declaration in declared.items()}
    strategy = spec["pipelineInfo"]["name"].split("-", 2)[-1]
    validate_round_parameters(
        strategy=strategy,
        budget=value["budget"],
        alpha=value["alpha"],
        beta=value["beta"],
        sigma=value["sigma"],
        metric=value["metric"],
        aggregation=value["aggregation"],
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="taudis pipeline", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="action", required=True)

    comp = sub.add_parser("compile", help="compile a pipeline to KFP v2 YAML")
    comp.add_argument("--pipeline", choices=PIPELINES, default="round")
    comp.add_argument("--strategy", default="taudis", help="taudis, random, uncertainty, coreset or diversity")
    comp.add_argument("--rounds", type=int, default=3, help="campaign pipeline: rounds unrolled")
    comp.add_argument("--shards", type=int, default=2, help="parallel inference shards")
    comp.add_argument(
        "--target",
        choices=TARGETS,
        default="kubernetes",
        help="kubernetes (KFP on GKE etc.), vertex (Vertex AI Pipelines) or local",
    )
    comp.add_argument(
        "--registry",
        default=None,
        help="registry of the taudis-cpu and taudis-gpu images, e.g. europe-west4-docker.pkg.dev/PROJECT/taudis "
        "(default: $TAUDIS_IMAGE_REGISTRY; required for kubernetes and vertex, localhost for local)",
    )
    comp.add_argument(
        "--portable-numerics",
        action="store_true",
        help="train, evaluate and infer on CPU kernels every x86-64 machine with AVX2 shares, so that models "
        "trained on different machines agree (TAUDIS_PORTABLE_NUMERICS; about 2x the CPU time)",
    )
    comp.add_argument("--out", required=True, help="YAML file to write")

    for action, help_ in (
        ("run-local", "run a compiled pipeline here with kfp.local"),
        ("submit", "submit one run to a KFP endpoint or to Vertex AI Pipelines"),
        ("schedule", "create a recurring run on a KFP endpoint or a Vertex AI schedule"),
    ):
        p = sub.add_parser(action, help=help_)
        p.add_argument("package", help="compiled pipeline YAML")
        p.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE")
        p.add_argument(
            "--pipeline-root",
            required=True,
            help="where KFP keeps artifacts: a local directory for run-local, gs://... on a cluster",
        )
        if action == "run-local":
            p.add_argument(
                "--runner",
                choices=RUNNERS,
                default="subprocess",
                help="subprocess (this Python) or docker (each step in its image, via DOCKER_HOST)",
            )
            continue
        p.add_argument("--target", choices=SUBMIT_TARGETS, default="kubernetes", help="kubernetes (KFP) or vertex")
        p.add_argument("--host", default=None, help="kubernetes: KFP API endpoint, e.g. https://kfp.example.com")
        p.add_argument("--experiment", default="taudis", help="kubernetes: KFP experiment")
        p.add_argument("--namespace", default=None, help="kubernetes: KFP namespace")
        p.add_argument("--project", default=None, help="vertex: Google Cloud project")
        p.add_argument("--location", default=None, help="vertex: region, e.g. europe-west4")
        p.add_argument(
            "--service-account",
            default=None,
            help="the runs' identity: a Kubernetes service account (e.g. taudis-runner) or, on vertex, "
            "a Google service account email",
        )
        if action == "submit":
            p.add_argument("--run-name", default=None)
        if action == "schedule":
            p.add_argument("--cron", required=True, help='6-field cron, e.g. "0 0 6 * * 1" (Mondays 06:00)')
            p.add_argument("--name", default="taudis-round")
    return parser


def _send(args: argparse.Namespace, arguments: dict[str, Any]) -> str:
    """Submit or schedule on the chosen target; returns what to print."""
    if args.target == "vertex":
        from taudis_kfp.pipelines.vertex import schedule_vertex_runs, submit_vertex_run

        if not (args.project and args.location):
            raise ValueError("--target vertex needs --project and --location")
        where = {"project": args.project, "location": args.location, "pipeline_root": args.pipeline_root}
        if args.action == "submit":
            job = submit_vertex_run(
                args.package, arguments, **where, service_account=args.service_account, run_name=args.run_name
            )
            return f"submitted Vertex AI pipeline job {job}"
        schedule = schedule_vertex_runs(
            args.package, arguments, **where, cron=args.cron, name=args.name, service_account=args.service_account
        )
        return f"created Vertex AI schedule {schedule} ({args.cron}, one run at a time, nothing queued)"
    if not args.host:
        raise ValueError("--target kubernetes needs --host (the KFP API endpoint)")
    common = {
        "pipeline_root": args.pipeline_root,
        "experiment": args.experiment,
        "namespace": args.namespace,
        "service_account": args.service_account,
    }
    if args.action == "submit":
        return f"submitted run {submit_run(args.host, args.package, arguments, run_name=args.run_name, **common)}"
    job = schedule_runs(args.host, args.package, arguments, cron=args.cron, name=args.name, **common)
    return f"created recurring run {job} ({args.cron}, max_concurrency=1, no catch-up)"


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.action == "compile":
            out = compile_pipeline(
                args.out,
                args.pipeline,
                args.strategy,
                registry=args.registry,
                rounds=args.rounds,
                num_shards=args.shards,
                target=args.target,
                portable_numerics=args.portable_numerics,
            )
            print(f"compiled {args.pipeline} pipeline ({args.strategy}, target {args.target}) to {out}")
            return 0
        arguments = typed_arguments(args.package, args.param)
        if args.action == "run-local":
            run_local(args.package, arguments, args.pipeline_root, runner=args.runner)
            print(f"local run finished; artifacts under {args.pipeline_root}")
        else:
            print(_send(args, arguments))
    except (ValueError, FileNotFoundError) as err:
        print(f"taudis pipeline: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        why = _api_failure(err)
        if why is None:
            raise
        print(f"taudis pipeline: the KFP API at {args.host}: {why}", file=sys.stderr)
        return 1
    return 0


def _api_failure(err: Exception) -> str | None:
    """What went wrong talking to a KFP endpoint (unreachable, or an error answer), else None: a bug propagates."""
    import urllib3
    from kfp_server_api.exceptions import ApiException

    if isinstance(err, urllib3.exceptions.MaxRetryError):
        return f"cannot be reached ({err.reason}): is --host right, and the port-forward or proxy up?"
    if isinstance(err, urllib3.exceptions.HTTPError):
        return f"cannot be reached ({err})"
    if isinstance(err, ApiException):
        hint = " (the runner's identity lacks the permission?)" if err.status in (401, 403) else ""
        return f"answered {err.status} {err.reason}{hint}: {str(err.body or '')[:500]}"
    return None


if __name__ == "__main__":
    sys.exit(main())
