#!/usr/bin/env python3
"""Build the taudis-cpu and taudis-gpu images from images/, and push them to a registry.

    .venv/bin/python scripts/build_images.py --registry europe-west4-docker.pkg.dev/PROJECT/taudis --push
    make images REGISTRY=europe-west4-docker.pkg.dev/PROJECT/taudis PUSH=1

The image references are those a pipeline compiled with the same registry runs
(taudis_kfp.components.images.image_refs): ``REGISTRY/taudis-cpu:VERSION`` and
``REGISTRY/taudis-gpu:VERSION``, VERSION being the package version. Without a registry (nor
TAUDIS_IMAGE_REGISTRY) the images are ``localhost/...``: for this machine only, never pushed.

Steps: stage a build context under build/images/ (requirements from pyproject.toml, the taudis
wheel built from this checkout, the detectron2 install script), then ``podman build`` or
``docker build`` each Dockerfile, then push. Options for machines without a registry or with an
unusual network (this project's CI):

- ``--local-base``: build the base image from Debian bookworm with mmdebstrap (the mirror apt
  uses; the tarball is cached under ~/.cache/taudis/base, keyed by what makes it) instead of
  pulling the Dockerfiles' pinned python:3.11-slim-bookworm.
- ``--host-pip``: let pip inside the build use this machine's pip settings (index, find-links,
  constraints, CA bundle). They reach the RUN steps only, as build secrets and through a
  loopback HTTP server for local folders; nothing of them ends up in an image.
- ``--podman-conf``: run podman with images/podman/containers.conf and a storage of its own under
  ~/.cache/taudis/containers (see that file for why), not the system's.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from a checkout: import the package from it
    sys.path.insert(0, str(REPO))

from taudis import __version__  # noqa: E402
from taudis_kfp.components.images import LOCAL_REGISTRY, REGISTRY_ENV, image_ref, resolve_registry  # noqa: E402

KINDS = ("cpu", "gpu")
SOURCE_URL = "https://github.com/taudis/taudis"
# Build tools inside the images, pinned so that both bases (python:3.11-slim, Debian's python3) agree.
BUILD_TOOLS = ("pip==26.3",)
WHEEL_EPOCH = 315532800  # 1980-01-01, the earliest time a zip entry can hold
# The package sources that go into the wheel (setup.py maps components/, pipelines/, configs/).
WHEEL_SOURCES = ("pyproject.toml", "setup.py", "README.md", "taudis", "components", "pipelines", "configs")
LOCAL_BASE_SUITE = "bookworm"
LOCAL_BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates", "passwd")


def cache_dir() -> Path:
    """Where slow-to-make things are kept, outside the checkout: $TAUDIS_CACHE_DIR or ~/.cache/taudis."""
    if os.environ.get("TAUDIS_CACHE_DIR"):
        return Path(os.environ["TAUDIS_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "taudis"


def podman_environment(cache: Path | None = None) -> dict[str, str]:
    """CONTAINERS_CONF and CONTAINERS_STORAGE_CONF for podman with the project's settings and storage."""
    root = (cache or cache_dir()) / "containers"
    run_root = Path(tempfile.gettempdir()) / f"taudis-podman-{os.getuid()}"
    storage_conf = root / "storage.conf"
    text = f'[storage]\ndriver = "overlay"\ngraphroot = "{root / "storage"}"\nrunroot = "{run_root}"\n'
    if not storage_conf.is_file() or storage_conf.read_text() != text:
        root.mkdir(parents=True, exist_ok=True)
        storage_conf.write_text(text)
    return {
        "CONTAINERS_CONF": str(REPO / "images" / "podman" / "containers.conf"),
        "CONTAINERS_STORAGE_CONF": str(storage_conf),
    }


def pick_engine(requested: str) -> str:
    """ "podman" or "docker": the one asked for, else podman if installed, else docker."""
    if requested != "auto":
        if not shutil.which(requested):
            raise SystemExit(f"build_images: {requested} is not installed")
        return requested
    for engine in ("podman", "docker"):
        if shutil.which(engine):
            return engine
    raise SystemExit("build_images: neither podman nor docker is installed")


# ---------------------------------------------------------------------------------------------
# The build context


def stage_context(context: Path) -> Path:
    """Write the build context: requirements, the taudis wheel, build helpers; returns it.

    Layout (what the Dockerfiles COPY)::

        build-env.sh                     images/build-env.sh
        requirements/tools.txt           pip's pin (BUILD_TOOLS)
        requirements/runtime.txt         pyproject.toml [project] dependencies
        requirements/model.txt           pyproject.toml optional-dependencies.model (torch)
        detectron2/                      scripts/install-detectron2.sh and its requirements
        wheels/taudis-VERSION-py3-none-any.whl
    """
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = {
        "tools": list(BUILD_TOOLS),
        "runtime": project["dependencies"],
        "model": project["optional-dependencies"]["model"],
    }
    for name, lines in requirements.items():
        _write_if_changed(context / "requirements" / f"{name}.txt", "".join(f"{line}\n" for line in lines))
    _write_if_changed(context / "build-env.sh", (REPO / "images" / "build-env.sh").read_text())
    for name in ("install-detectron2.sh", "detectron2-requirements.txt"):
        _write_if_changed(context / "detectron2" / name, (REPO / "scripts" / name).read_text())
    build_wheel(context / "wheels")
    return context


def build_wheel(out: Path) -> Path:
    """The taudis wheel of this checkout's working tree, built from a clean copy (no stale build/)."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")
    with tempfile.TemporaryDirectory(prefix="taudis-wheel-") as tmp:
        for name in WHEEL_SOURCES:
            source = REPO / name
            if source.is_dir():
                shutil.copytree(source, Path(tmp) / name, ignore=ignore)
            else:
                shutil.copy2(source, Path(tmp) / name)
        command = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out), tmp]
        # A fixed zip timestamp: the wheel's bytes then change only with its sources, and so does the
        # image layer that copies it (engines cache COPY by content).
        subprocess.run(command, check=True, env={**os.environ, "SOURCE_DATE_EPOCH": str(WHEEL_EPOCH)})
    (wheel,) = out.glob("taudis-*.whl")
    return wheel


def _write_if_changed(path: Path, text: str) -> None:
    """Write ``text`` unless the file already holds it (engines key their layer cache on content anyway)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)


# ---------------------------------------------------------------------------------------------
# pip settings of this machine, passed to a build without entering an image


class HostPip:
    """This machine's pip settings, for the RUN steps of a build only.

    ``pip config list`` gives the merged settings (config files and PIP_* variables). The CA
    bundle travels as the secret ``cacert`` and the rewritten settings as the secret ``pipconf``
    (images/build-env.sh picks both up from /run/secrets). Local paths in the settings (find-links
    folders, file:// indexes, constraint files) are served read-only over HTTP on this machine's
    loopback while the build runs, and the build shares the host network to reach them: nothing
    is mounted into the build, so no trace of these paths is left in a layer. A file:// index is
    served with its parent folder, which is where such indexes keep the files their pages link to.
    Use as a context manager: the server stops at exit.
    """

    def __init__(self, workdir: Path, python: str = sys.executable):
        self.secrets: dict[str, Path] = {}
        self.served: dict[str, Path] = {}  # URL path prefix -> local folder
        listed = subprocess.run(
            [python, "-m", "pip", "config", "list"], check=True, capture_output=True, text=True
        ).stdout
        settings: dict[str, dict[str, str]] = {}
        for line in listed.splitlines():
            key, _, value = line.partition("=")
            section, _, option = key.rpartition(".")
            settings.setdefault("global" if section in (":env:", "") else section, {})[option] = value.strip("'\"")
        cert = settings.get("global", {}).pop("cert", None)
        if cert:
            self.secrets["cacert"] = Path(cert)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        base = f"http://127.0.0.1:{self.server.server_address[1]}"
        for options in settings.values():
            for option, value in options.items():
                options[option] = " ".join(self._served(token, base) for token in value.split())
        conf = workdir / "pip.conf"
        conf.write_text("".join(_ini_section(section, options) for section, options in settings.items()))
        self.secrets["pipconf"] = conf
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def arguments(self) -> list[str]:
        """The build command's options: the secrets, and the host network when something is served."""
        args = [f"--secret=id={name},src={path}" for name, path in self.secrets.items()]
        return [*args, "--network=host"] if self.served else args

    def _served(self, token: str, base: str) -> str:
        """``token`` as the build sees it: a local path or file:// URL becomes a URL of the loopback server."""
        scheme = "file://" if token.startswith("file://") else ""
        path = Path(token[len(scheme) :])
        if not path.is_absolute() or not path.exists():
            return token
        folder = path.parent if path.is_file() or (scheme and path.name == "simple") else path
        prefix = str(len(self.served))
        self.served[prefix] = folder
        return f"{base}/{prefix}/{path.relative_to(folder)}".rstrip("/.") + ("/" if path.is_dir() else "")

    def _handler(self) -> type[SimpleHTTPRequestHandler]:
        served = self.served

        class Files(SimpleHTTPRequestHandler):
            def translate_path(self, path: str) -> str:
                prefix, _, rest = urlsplit(path).path.lstrip("/").partition("/")
                if prefix not in served:
                    return "/nonexistent"
                target = (served[prefix] / unquote(rest)).resolve()
                return str(target) if target.is_relative_to(served[prefix].resolve()) else "/nonexistent"

            def log_message(self, *args: object) -> None:  # pip's requests are not news
                pass

        return Files

    def __enter__(self) -> HostPip:
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def _ini_section(name: str, options: Mapping[str, str]) -> str:
    return f"[{name}]\n" + "".join(f"{key} = {value}\n" for key, value in options.items())


# ---------------------------------------------------------------------------------------------
# A base image made here (no registry needed)


def debian_sources(paths: Iterable[Path] = (Path("/etc/apt/sources.list.d"),)) -> str:
    """The deb822 stanzas of this machine's apt sources for the local base's suite (bookworm*)."""
    stanzas = []
    for folder in paths:
        for source in sorted(folder.glob("*.sources")):
            for stanza in source.read_text().split("\n\n"):
                fields = dict(
                    line.split(":", 1) for line in stanza.splitlines() if ":" in line and not line.startswith("#")
                )
                suites = fields.get("Suites", "").split()
                if fields.get("Enabled", "yes").strip() != "no" and any(s.startswith(LOCAL_BASE_SUITE) for s in suites):
                    stanzas.append("\n".join(line for line in stanza.splitlines() if not line.startswith("#")))
    if not stanzas:
        raise SystemExit(f"build_images: no apt source for {LOCAL_BASE_SUITE} in /etc/apt/sources.list.d/*.sources")
    return "\n\n".join(stanzas) + "\n"


def local_base(engine: str, env: Mapping[str, str], dry_run: bool = False) -> str:
    """A Debian bookworm base image with Python 3.11, made with mmdebstrap and imported; returns its reference.

    The tarball is cached under cache_dir()/base, named by a hash of everything that makes it
    (mmdebstrap's version, suite, variant, packages, apt sources), and imported only if the
    engine does not hold that image yet.
    """
    if not shutil.which("mmdebstrap"):
        raise SystemExit("build_images: --local-base needs mmdebstrap (apt-get install mmdebstrap)")
    version = subprocess.run(["mmdebstrap", "--version"], check=True, capture_output=True, text=True).stdout.strip()
    sources = debian_sources()
    recipe = "\n".join([version, LOCAL_BASE_SUITE, "minbase", *LOCAL_BASE_PACKAGES, sources])
    key = hashlib.sha256(recipe.encode()).hexdigest()[:16]
    ref = f"{LOCAL_REGISTRY}/taudis-base:{LOCAL_BASE_SUITE}-{key}"
    folder = cache_dir() / "base"
    tarball = folder / f"{LOCAL_BASE_SUITE}-{key}.tar"
    if dry_run:
        return ref
    if subprocess.run([engine, "image", "inspect", ref], env=env, capture_output=True).returncode == 0:
        return ref
    if not tarball.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        sources_file = folder / f"{LOCAL_BASE_SUITE}-{key}.sources"
        sources_file.write_text(sources)
        partial = tarball.with_suffix(".tar.partial")
        command = [
            "mmdebstrap",
            "--variant=minbase",
            "--format=tar",  # not guessed: the .partial name has no tar extension
            f"--include={','.join(LOCAL_BASE_PACKAGES)}",
            LOCAL_BASE_SUITE,
            str(partial),
            str(sources_file),
        ]
        print("+", shlex.join(command), flush=True)
        subprocess.run(command, check=True)
        partial.rename(tarball)
    _run([engine, "import", str(tarball), ref], env)
    return ref


# ---------------------------------------------------------------------------------------------
# Build and push


def revision() -> str:
    """The checkout's commit, with "-dirty" when the working tree differs from it."""
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], check=True, capture_output=True, text=True)
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain"], capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def build_command(
    engine: str,
    kind: str,
    ref: str,
    context: Path,
    *,
    base_image: str | None,
    host_pip: HostPip | None,
    source_url: str,
) -> list[str]:
    """The engine's build command line for one image."""
    command = [engine, "build", f"--file={REPO / 'images' / f'{kind}.Dockerfile'}", f"--tag={ref}"]
    build_args = {"TAUDIS_VERSION": __version__, "REVISION": revision(), "SOURCE_URL": source_url}
    if base_image:
        build_args["BASE_IMAGE"] = base_image
        if engine == "podman" and base_image.startswith(f"{LOCAL_REGISTRY}/"):
            command.append("--pull=never")  # a local base must never be looked up in a registry
    command += [f"--build-arg={name}={value}" for name, value in build_args.items()]
    if host_pip:
        command += host_pip.arguments()
    return [*command, str(context)]


def _run(command: Sequence[str], env: Mapping[str, str]) -> None:
    print("+", shlex.join(command), flush=True)
    subprocess.run(command, check=True, env=dict(env))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="build_images.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--registry", default=None, help=f"where the images go (default ${REGISTRY_ENV}, else {LOCAL_REGISTRY})"
    )
    parser.add_argument("--push", action="store_true", help="push the images after building them")
    parser.add_argument("--only", choices=KINDS, action="append", help="build only this image (repeatable)")
    parser.add_argument(
        "--engine", choices=("auto", "podman", "docker"), default=os.environ.get("TAUDIS_ENGINE", "auto")
    )
    parser.add_argument("--base-image", default=None, help="base image of both Dockerfiles (default: their pinned one)")
    parser.add_argument("--local-base", action="store_true", help="make the base here with mmdebstrap (no registry)")
    parser.add_argument("--host-pip", action="store_true", help="use this machine's pip settings inside the build")
    parser.add_argument("--podman-conf", action="store_true", help="podman with the project's config and storage")
    parser.add_argument("--source-url", default=SOURCE_URL, help="the OCI source label")
    parser.add_argument("--context", type=Path, default=REPO / "build" / "images", help="where to stage the context")
    parser.add_argument("--dry-run", action="store_true", help="print the image references and commands only")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    registry = resolve_registry(args.registry, "local")
    if args.push and registry == LOCAL_REGISTRY:
        raise SystemExit(f"build_images: --push needs --registry (or ${REGISTRY_ENV}); {LOCAL_REGISTRY} is not one")
    engine = pick_engine(args.engine) if not args.dry_run else (args.engine if args.engine != "auto" else "podman")
    env = {**os.environ, **(podman_environment() if args.podman_conf and engine == "podman" else {})}
    kinds = args.only or list(KINDS)
    refs = {kind: image_ref(kind, registry) for kind in kinds}
    base = local_base(engine, env, args.dry_run) if args.local_base else args.base_image
    with tempfile.TemporaryDirectory(prefix="taudis-build-") as tmp, contextlib.ExitStack() as stack:
        host_pip = stack.enter_context(HostPip(Path(tmp))) if args.host_pip else None
        context = args.context if args.dry_run else stage_context(args.context)
        commands = [
            build_command(engine, kind, ref, context, base_image=base, host_pip=host_pip, source_url=args.source_url)
            for kind, ref in refs.items()
        ]
        commands += [[engine, "push", ref] for ref in refs.values()] if args.push else []
        for command in commands:
            if args.dry_run:
                print("+", shlex.join(command))
            else:
                _run(command, env)
    for ref in refs.values():
        print(ref)
    return 0


if __name__ == "__main__":
    sys.exit(main())
