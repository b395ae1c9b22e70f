"""One interface over ``gs://`` URIs (google-cloud-storage) and local paths.

Every function takes a URI: ``gs://bucket/name`` for Google Cloud Storage, anything else (a plain
path, or ``file://...``) for the local file system. The rest of taudis calls these module-level
functions only, never the GCS client, so a component runs the same against a bucket, a local
directory and the fake-gcs-server the tests start.

Credentials come from the environment: Application Default Credentials (workload identity on
GKE, ``GOOGLE_APPLICATION_CREDENTIALS`` elsewhere). When ``STORAGE_EMULATOR_HOST`` is set the
client talks to that emulator with anonymous credentials and the project from
``GOOGLE_CLOUD_PROJECT`` (default ``taudis-emulator``).

Retries (GCS): transient errors (429, 500, 502, 503, 504, connection resets, timeouts) are retried
with exponential backoff for up to ``TAUDIS_GCS_RETRY_TIMEOUT`` seconds (default 120) on
operations that are safe to repeat: every read (``read_bytes``, ``open_read``, ``download_file``,
``exists``, ``list_uris``, ``read_versioned``), plain writes of whole objects (``write_bytes``,
``upload_file``, ``copy``: writing the same bytes to the same name twice leaves the same object)
and conditional writes (``write_if_generation``: a repeat whose first attempt landed fails its
precondition with 412 instead of writing twice, and the caller sees PreconditionFailedError).
Local operations are not retried: their errors are not transient.

Local writes are atomic: bytes go to a temporary file in the target's directory, are flushed to
disk, and the file is renamed over the target, so a reader sees the old or the new content.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

GCS_SCHEME = "gs://"
FILE_SCHEME = "file://"
EMULATOR_ENV = "STORAGE_EMULATOR_HOST"
RETRY_TIMEOUT_ENV = "TAUDIS_GCS_RETRY_TIMEOUT"
DEFAULT_RETRY_TIMEOUT = 120.0
EMULATOR_PROJECT = "taudis-emulator"
REQUEST_TIMEOUT = 60.0
TEMP_PREFIX = ".taudis-tmp-"
LOCK_SUFFIX = ".lock"


class StorageError(Exception):
    """A storage operation failed; the message names the URI."""


class NotFoundError(StorageError, FileNotFoundError):
    """The object or file does not exist."""


class PreconditionFailedError(StorageError):
    """A conditional write found another generation than the one it was conditioned on."""


@dataclass(frozen=True)
class Versioned:
    """An object's bytes and the generation they were read at (for compare-and-swap).

    On GCS the generation is the object's generation; on local paths it is derived from the
    content (a 63-bit hash), which is all compare-and-swap needs: an unchanged content means
    nothing was lost. Generation 0 means "does not exist" on both.
    """

    data: bytes
    generation: int


# ---------------------------------------------------------------------------------------- URIs


def is_gcs(uri: str | os.PathLike[str]) -> bool:
    """Whether ``uri`` names a GCS object (``gs://bucket/...``)."""
    return str(uri).startswith(GCS_SCHEME)


def split_gcs(uri: str) -> tuple[str, str]:
    """``gs://bucket/a/b`` -> ``("bucket", "a/b")``.

    Raises:
        StorageError: not a gs:// URI, or no bucket.
    """
    if not is_gcs(uri):
        raise StorageError(f"{uri}: not a gs:// URI")
    bucket, _, name = uri[len(GCS_SCHEME) :].partition("/")
    if not bucket:
        raise StorageError(f"{uri}: no bucket in the URI")
    return bucket, name


def local_path(uri: str | os.PathLike[str]) -> Path:
    """The local path of a non-GCS URI (a ``file://`` prefix is dropped)."""
    text = str(uri)
    if is_gcs(text):
        raise StorageError(f"{text}: a gs:// URI has no local path")
    return Path(text[len(FILE_SCHEME) :] if text.startswith(FILE_SCHEME) else text)


def join(base: str | os.PathLike[str], *parts: str) -> str:
    """Join path parts onto a URI with single slashes (``join("gs://b/x/", "y", "z.json")``).

    A ``file://`` base keeps its scheme (``Path`` would fold ``file:///a`` into ``file:/a``).
    """
    text = str(base)
    scheme = FILE_SCHEME if text.startswith(FILE_SCHEME) else ""
    text = text[len(scheme) :]
    for part in parts:
        part = str(part)
        if not part:
            continue
        part = part.lstrip("/")  # a part never restarts the path from the root
        text = text.rstrip("/") + "/" + part if is_gcs(text) else str(Path(text) / part)
    return scheme + text


# ----------------------------------------------------------------------------------- GCS client

_clients: dict[tuple[int, str], Any] = {}
_clients_lock = threading.Lock()


def gcs_client() -> Any:
    """The process's google.cloud.storage Client (one per process and emulator host).

    Keyed by process id because a client must not cross a fork, and by the emulator host so a
    test that changes STORAGE_EMULATOR_HOST gets a client for the new server.
    """
    emulator = os.environ.get(EMULATOR_ENV, "")
    key = (os.getpid(), emulator)
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            from google.cloud import storage

            if emulator:
                from google.auth.credentials import AnonymousCredentials

                project = os.environ.get("GOOGLE_CLOUD_PROJECT", EMULATOR_PROJECT)
                client = storage.Client(project=project, credentials=AnonymousCredentials())
            else:
                client = storage.Client()
            _clients[key] = client
        return client


def gcs_retry() -> Any:
    """The retry policy of every retried GCS call (see the module docstring)."""
    from google.cloud.storage.retry import DEFAULT_RETRY

    timeout = float(os.environ.get(RETRY_TIMEOUT_ENV, DEFAULT_RETRY_TIMEOUT))
    policy = DEFAULT_RETRY.with_timeout(timeout).with_delay(initial=0.1, maximum=5.0, multiplier=2.0)
    return policy.with_predicate(is_transient)


def is_transient(exc: BaseException) -> bool:
    """Whether an error is worth retrying (the one place that decides it)."""
    from google.cloud.storage.retry import _should_retry

    if isinstance(exc, PreconditionFailedError | NotFoundError):
        return False
    if isinstance(exc, StorageError) and exc.__cause__ is not None:
        return is_transient(exc.__cause__)
    if isinstance(exc, ConnectionError | TimeoutError):
        return True
    if _auth_blip(exc):
        return True
    try:
        return bool(_should_retry(exc))
    except Exception:  # a predicate that cannot classify the error means "not transient"
        return False


def _auth_blip(exc: BaseException) -> bool:
    """A token refresh that failed on the way, not on its answer: workload identity's metadata
    server refuses connections in a pod's first seconds. A refused credential is not retried."""
    from google.auth import exceptions as auth

    if isinstance(exc, auth.TransportError):
        return True
    if isinstance(exc, auth.RefreshError):
        return bool(getattr(exc, "retryable", False)) or any(isinstance(a, auth.TransportError) for a in exc.args)
    return False


def _blob(uri: str) -> Any:
    bucket, name = split_gcs(uri)
    if not name:
        raise StorageError(f"{uri}: no object name")
    return gcs_client().bucket(bucket).blob(name)


@contextlib.contextmanager
def _gcs_errors(uri: str) -> Iterator[None]:
    """Translate google-cloud errors into this module's errors, naming the URI."""
    from google.api_core import exceptions as gexc

    try:
        yield
    except gexc.NotFound as err:
        raise NotFoundError(f"{uri}: not found") from err
    except gexc.PreconditionFailed as err:
        raise PreconditionFailedError(f"{uri}: generation precondition failed (412)") from err


# ------------------------------------------------------------------------------------- local IO


def _atomic_write_local(path: Path, data: bytes, *, exclusive: bool = False) -> None:
    """Write a complete temp file beside ``path``, then rename it over ``path``.

    ``exclusive``: hard-link it to ``path`` instead, which fails if ``path`` exists (create only,
    atomically, without a lock).

    Raises:
        PreconditionFailedError: ``exclusive`` and ``path`` exists.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if not exclusive:
            os.replace(tmp, path)
            return
        os.chmod(tmp, 0o644)
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise PreconditionFailedError(f"{path}: exists") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _content_generation(data: bytes) -> int:
    # 63 bits so it fits a signed int64 like a GCS generation; never 0 (0 means "absent").
    value = int.from_bytes(hashlib.sha256(data).digest()[:8], "big") >> 1
    return value or 1


@contextlib.contextmanager
def _local_lock(path: Path) -> Iterator[None]:
    """An exclusive fcntl lock on ``<path>.lock`` (a sibling file that is never removed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = path.with_name(path.name + LOCK_SUFFIX)
    with open(lock_path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _read_local(uri: str) -> bytes:
    path = local_path(uri)
    try:
        return path.read_bytes()
    except FileNotFoundError as err:
        raise NotFoundError(f"{uri}: not found") from err
    except IsADirectoryError as err:
        raise StorageError(f"{uri}: is a directory") from err


# ------------------------------------------------------------------------------------ whole objects


def read_bytes(uri: str | os.PathLike[str]) -> bytes:
    """The whole object's bytes (retried on GCS).

    Raises:
        NotFoundError: no such object or file.
    """
    uri = str(uri)
    if not is_gcs(uri):
        return _read_local(uri)
    with _gcs_errors(uri):
        return bytes(_blob(uri).download_as_bytes(retry=gcs_retry(), timeout=REQUEST_TIMEOUT))


# Objects read at once by read_many on GCS: each read waits on a round trip, not on the CPU. The
# client's HTTP session keeps 10 connections: more threads would open and drop connections.
PARALLEL_READS = 10


def read_many(uris: Sequence[str], *, missing_ok: bool = False) -> list[bytes | None]:
    """Every object's bytes, in order: in parallel on GCS (a campaign's hundreds of label parts
    would otherwise cost a round trip each, one after another), one by one locally.

    Args:
        missing_ok: a missing object gives None instead of raising.

    Raises:
        NotFoundError: an object is missing (unless ``missing_ok``).
    """

    def read(uri: str) -> bytes | None:
        try:
            return read_bytes(uri)
        except NotFoundError:
            if missing_ok:
                return None
            raise

    if len(uris) > 1 and any(is_gcs(u) for u in uris):
        with ThreadPoolExecutor(max_workers=min(PARALLEL_READS, len(uris))) as pool:
            return list(pool.map(read, uris))
    return [read(u) for u in uris]


SCAN_WINDOW = 256  # objects iter_many holds in memory at a time


def iter_many(uris: Sequence[str], *, missing_ok: bool = False) -> Iterator[tuple[str, bytes | None]]:
    """(uri, bytes) of every object, in order, read as :func:`read_many` does a window at a time, so
    that a scan of thousands of files holds a few hundred in memory."""
    for start in range(0, len(uris), SCAN_WINDOW):
        window = uris[start : start + SCAN_WINDOW]
        yield from zip(window, read_many(window, missing_ok=missing_ok), strict=True)


def write_bytes(uri: str | os.PathLike[str], data: bytes, *, content_type: str = "application/octet-stream") -> None:
    """Write a whole object (atomic locally; retried on GCS, where a repeat is harmless)."""
    uri = str(uri)
    if not is_gcs(uri):
        _atomic_write_local(local_path(uri), bytes(data))
        return
    with _gcs_errors(uri):
        _blob(uri).upload_from_string(
            bytes(data), content_type=content_type, retry=gcs_retry(), timeout=REQUEST_TIMEOUT
        )


def read_text(uri: str | os.PathLike[str]) -> str:
    """The object decoded as UTF-8."""
    return read_bytes(uri).decode("utf-8")


def write_text(uri: str | os.PathLike[str], text: str) -> None:
    """Write UTF-8 text (see write_bytes)."""
    write_bytes(uri, text.encode("utf-8"), content_type="text/plain; charset=utf-8")


def read_json(uri: str | os.PathLike[str]) -> Any:
    """Parse the object as JSON.

    Raises:
        NotFoundError: no such object.
        StorageError: not valid JSON (the message names the URI, line and column).
    """
    data = read_bytes(uri)
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise StorageError(f"{uri}: not valid JSON: {err}") from err


def dumps_json(obj: Any) -> bytes:
    """The one JSON encoding taudis writes: UTF-8, indented, keys in insertion order."""
    return (json.dumps(obj, indent=1, ensure_ascii=False) + "\n").encode("utf-8")


def write_json(uri: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as JSON (see write_bytes)."""
    write_bytes(uri, dumps_json(obj), content_type="application/json")


def exists(uri: str | os.PathLike[str]) -> bool:
    """Whether the object (GCS) or file/directory (local) exists (retried on GCS)."""
    uri = str(uri)
    if not is_gcs(uri):
        return local_path(uri).exists()
    return bool(_blob(uri).exists(retry=gcs_retry(), timeout=REQUEST_TIMEOUT))


def delete(uri: str | os.PathLike[str], *, missing_ok: bool = True) -> None:
    """Remove one object or file (not retried: a repeat after a lost answer would say 404)."""
    uri = str(uri)
    if not is_gcs(uri):
        try:
            local_path(uri).unlink()
        except FileNotFoundError as err:
            if not missing_ok:
                raise NotFoundError(f"{uri}: not found") from err
        return
    try:
        with _gcs_errors(uri):
            _blob(uri).delete(timeout=REQUEST_TIMEOUT)
    except NotFoundError:
        if not missing_ok:
            raise


# ---------------------------------------------------------------------------- compare-and-swap


def read_versioned(uri: str | os.PathLike[str]) -> Versioned | None:
    """The object's bytes with their generation, or None if it does not exist (retried on GCS)."""
    uri = str(uri)
    if not is_gcs(uri):
        try:
            data = _read_local(uri)
        except NotFoundError:
            return None
        return Versioned(data, _content_generation(data))
    blob = _blob(uri)
    try:
        with _gcs_errors(uri):
            data = blob.download_as_bytes(retry=gcs_retry(), timeout=REQUEST_TIMEOUT)
    except NotFoundError:
        return None
    return Versioned(bytes(data), int(blob.generation))


def write_if_generation(
    uri: str | os.PathLike[str], data: bytes, generation: int, *, content_type: str = "application/json"
) -> int:
    """Write ``data`` only if the object is still at ``generation`` (0: only if it does not exist).

    GCS: a single-request upload with ``if_generation_match`` (fake-gcs-server enforces the
    precondition only on those, and real GCS on all), retried on transient errors: a retry whose
    first attempt landed fails with 412. Local: under an exclusive fcntl lock on ``<path>.lock``,
    compare the current content's generation, then write atomically (temp file + rename), so
    readers never need the lock.

    Returns:
        The new generation.

    Raises:
        PreconditionFailedError: the object changed (or exists, for 0) since ``generation``.
    """
    uri = str(uri)
    data = bytes(data)
    if not is_gcs(uri):
        path = local_path(uri)
        with _local_lock(path):
            current = read_versioned(uri)
            current_generation = 0 if current is None else current.generation
            if current_generation != generation:
                raise PreconditionFailedError(
                    f"{uri}: generation precondition failed (expected {generation}, found {current_generation})"
                )
            _atomic_write_local(path, data)
        return _content_generation(data)
    blob = _blob(uri)
    with _gcs_errors(uri):
        # upload_from_string with known size is a single multipart request (see module docstring).
        blob.upload_from_string(
            data, content_type=content_type, if_generation_match=generation, retry=gcs_retry(), timeout=REQUEST_TIMEOUT
        )
    return int(blob.generation)


# ------------------------------------------------------------------------------------- streaming


def open_read(uri: str | os.PathLike[str]) -> IO[bytes]:
    """A binary file object that streams the object (chunked ranged reads on GCS, retried)."""
    uri = str(uri)
    if not is_gcs(uri):
        try:
            return open(local_path(uri), "rb")
        except FileNotFoundError as err:
            raise NotFoundError(f"{uri}: not found") from err
    with _gcs_errors(uri):
        blob = _blob(uri)
        blob.reload(retry=gcs_retry(), timeout=REQUEST_TIMEOUT)
        reader: IO[bytes] = blob.open("rb", retry=gcs_retry())
        return reader


def download_file(uri: str | os.PathLike[str], dest: str | os.PathLike[str]) -> Path:
    """Copy an object to a local file (streamed; atomic: temp file + rename; retried on GCS)."""
    uri, dest_path = str(uri), Path(dest)
    dest_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=dest_path.parent)
    os.close(fd)
    try:
        if is_gcs(uri):
            with _gcs_errors(uri):
                _blob(uri).download_to_filename(tmp, retry=gcs_retry(), timeout=REQUEST_TIMEOUT)
        else:
            try:
                shutil.copyfile(local_path(uri), tmp)
            except FileNotFoundError as err:
                raise NotFoundError(f"{uri}: not found") from err
        os.replace(tmp, dest_path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return dest_path


def upload_file(src: str | os.PathLike[str], uri: str | os.PathLike[str]) -> str:
    """Copy a local file to an object (streamed, resumable for large files on GCS; retried)."""
    uri, src_path = str(uri), Path(src)
    if not src_path.is_file():
        raise NotFoundError(f"{src_path}: not found")
    if is_gcs(uri):
        with _gcs_errors(uri):
            _blob(uri).upload_from_filename(str(src_path), retry=gcs_retry(), timeout=REQUEST_TIMEOUT)
        return uri
    dest = local_path(uri)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=dest.parent)
    os.close(fd)
    try:
        shutil.copyfile(src_path, tmp)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return uri


def copy(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> str:
    """Copy one object: server-side within GCS, streamed through a temp file across backends."""
    src, dst = str(src), str(dst)
    if is_gcs(src) and is_gcs(dst):
        source = _blob(src)
        dest_bucket, dest_name = split_gcs(dst)
        with _gcs_errors(src):
            source.bucket.copy_blob(
                source, gcs_client().bucket(dest_bucket), dest_name, retry=gcs_retry(), timeout=REQUEST_TIMEOUT
            )
        return dst
    if not is_gcs(src):
        return upload_file(local_path(src), dst)
    download_file(src, local_path(dst))
    return dst


def write_once(uri: str | os.PathLike[str], data: bytes, *, content_type: str = "application/json") -> None:
    """Create an immutable object: written if absent; if present it must hold exactly ``data``.

    Immutable objects (label parts, ledger segments) are named by their content or uniquely, so
    a retry or a racing writer with the same bytes is a success, and nothing is ever overwritten.

    Raises:
        StorageError: the object exists with other bytes.
    """
    uri, data = str(uri), bytes(data)
    try:
        if is_gcs(uri):
            write_if_generation(uri, data, 0, content_type=content_type)
        else:
            _atomic_write_local(local_path(uri), data, exclusive=True)
    except PreconditionFailedError:
        if read_bytes(uri) != data:
            raise StorageError(f"{uri}: exists with other content; an immutable object is never overwritten") from None


def move(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> str:
    """Move one object or file: a rename locally (atomic), copy then delete on GCS.

    A move interrupted on GCS leaves both copies; repeating it completes it (the copy is
    rewritten with the same bytes, then the source deleted).
    """
    src, dst = str(src), str(dst)
    if not is_gcs(src) and not is_gcs(dst):
        target = local_path(dst)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(local_path(src), target)
        except FileNotFoundError as err:
            raise NotFoundError(f"{src}: not found") from err
        return dst
    copy(src, dst)
    delete(src)
    return dst


def move_if_unchanged(src: str | os.PathLike[str], dst: str | os.PathLike[str], version: Versioned) -> bool:
    """Move the ``version`` of ``src`` that was read to ``dst``: its bytes go to ``dst``, and ``src``
    is deleted only if it still is that version.

    Someone may overwrite ``src`` while its old version is being handled (an annotator uploading
    a fuller export under the same name). A plain move would carry the new version off unhandled;
    this leaves it where it is, for whoever handles the next version.

    GCS: the generation is compared (or, for a re-upload of the very bytes, their MD5), and the
    delete carries ``if_generation_match`` too (real GCS enforces it, closing the window between
    the two; fake-gcs-server does not). Local: the content is compared just before the unlink
    (uploads take no lock, so a narrow window stays).

    Returns:
        True if ``src`` was deleted, False if it changed and stays.

    Raises:
        NotFoundError: ``src`` is gone (another mover took it).
    """
    src, dst = str(src), str(dst)
    write_bytes(dst, version.data)
    if not is_gcs(src):
        current = read_versioned(src)
        if current is None:
            raise NotFoundError(f"{src}: not found")
        if current.generation != version.generation:  # the content's own hash: same bytes, same generation
            return False
        local_path(src).unlink(missing_ok=True)
        return True
    blob = _blob(src)
    with _gcs_errors(src):
        blob.reload(retry=gcs_retry(), timeout=REQUEST_TIMEOUT)
    same_bytes = blob.md5_hash == base64.b64encode(hashlib.md5(version.data).digest()).decode()
    if int(blob.generation) != version.generation and not same_bytes:
        return False
    try:
        with _gcs_errors(src):
            blob.delete(if_generation_match=int(blob.generation), retry=gcs_retry(), timeout=REQUEST_TIMEOUT)
    except PreconditionFailedError:
        return False  # replaced between the reload and the delete
    except NotFoundError:
        pass  # a retried delete whose first try landed
    return True


# ------------------------------------------------------------------------------------ listings


def list_uris(prefix: str | os.PathLike[str]) -> list[str]:
    """Every object under ``prefix``, as full URIs in sorted order (retried on GCS).

    GCS: every object whose name starts with the prefix (a plain string prefix: ``gs://b/run``
    lists ``run/x`` and ``run2/y``; end it with ``/`` to list one folder). Local: a directory
    lists every file below it, recursively; a prefix ending with ``/`` that is no directory lists
    nothing (as on GCS); any other path lists the files of its parent directory tree whose path
    starts with it. Temporary files and lock files are left out.
    """
    prefix = str(prefix)
    if is_gcs(prefix):
        bucket, name = split_gcs(prefix)
        blobs = gcs_client().list_blobs(bucket, prefix=name or None, retry=gcs_retry(), timeout=REQUEST_TIMEOUT)
        return sorted(f"{GCS_SCHEME}{bucket}/{blob.name}" for blob in blobs if not blob.name.endswith("/"))
    root = local_path(prefix)
    if root.is_dir():
        base, text = root, None
    elif prefix.endswith("/"):  # a folder that does not exist; not its siblings that share the name
        return []
    else:
        base, text = root.parent, str(root)
    if not base.is_dir():
        return []
    found = []
    for dirpath, _, filenames in os.walk(base):
        for filename in filenames:
            if filename.startswith(TEMP_PREFIX) or filename.endswith(LOCK_SUFFIX):
                continue
            path = os.path.join(dirpath, filename)
            if text is None or path.startswith(text):
                found.append(path)
    return sorted(found)


def download_tree(uri: str | os.PathLike[str], local_dir: str | os.PathLike[str]) -> list[Path]:
    """Copy every object under the folder ``uri`` into ``local_dir``, keeping relative paths.

    Layout: ``<uri>/a/b.npy`` -> ``<local_dir>/a/b.npy``. A local ``uri`` is copied file by file.

    Returns:
        The files written, sorted.

    Raises:
        NotFoundError: nothing under ``uri``.
    """
    uri = str(uri)
    folder = uri.rstrip("/") + "/" if is_gcs(uri) else str(local_path(uri)) + os.sep
    sources = list_uris(folder)
    if not sources:
        raise NotFoundError(f"{uri}: no objects under this folder")
    written = []
    for source in sources:
        relative = source[len(folder) :]
        written.append(download_file(source, Path(local_dir) / relative))
    return sorted(written)


def upload_tree(local_dir: str | os.PathLike[str], uri: str | os.PathLike[str]) -> list[str]:
    """Copy every file under ``local_dir`` to ``<uri>/<relative path>``.

    Returns:
        The URIs written, sorted.

    Raises:
        NotFoundError: ``local_dir`` is not a directory.
    """
    root = Path(local_dir)
    if not root.is_dir():
        raise NotFoundError(f"{root}: not a directory")
    written = []
    for path in list_uris(str(root)):
        relative = Path(path).relative_to(root).as_posix()
        written.append(upload_file(path, join(str(uri), relative)))
    return sorted(written)
