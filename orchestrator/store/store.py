"""The result store (docs/design.md §4): a local folder, a shared filesystem or a cloud URI, through
pyarrow filesystems as Ray's storage is, so `s3://` / `gs://` roots work unchanged. Every JSON or
weights file is written atomically (temp file + rename; object stores write whole objects); stage ids
and study names are validated so no key makes a path outside the root."""

from __future__ import annotations

import io
import json
import logging
import os
import tempfile
import time
import uuid
from typing import TYPE_CHECKING, Any

import pyarrow as pa_lib
import pyarrow.fs as pafs

from orchestrator.store.format import (
    CONFIG_FILE,
    ERROR_FILE,
    METRICS_FILE,
    PLAN_FILE,
    RESULT_FILE,
    SCHEMA_VERSION,
    STAGES_DIR,
    STUDIES_DIR,
    STUDY_FILE,
    WEIGHTS_FILE,
    ResultRecord,
    StageRecord,
    StoreError,
    is_stage_id,
    is_study_name,
    parse_json,
    parse_json_lines,
    parse_json_or_warn,
    read_result_record,
    read_stage_record,
    stage_parts,
    study_parts,
)

if TYPE_CHECKING:  # torch is imported where weights are read/written: `plan`/`status` stay fast
    import torch

log = logging.getLogger(__name__)


URI_SCHEMES = ("s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss", "file")  # as pyarrow.fs resolves them


def check_storage(storage: str, arg: str = "--storage") -> None:
    """Refuse a store location that cannot work, before anything is written or started: an existing
    file, a folder that cannot be created or written (probed with a temporary folder, removed at once),
    an unknown URI scheme. Bucket URIs are not contacted here (credentials are checked by first use)."""
    scheme, sep, rest = storage.partition("://")
    if sep:
        if scheme.lower() not in URI_SCHEMES:
            known = ", ".join(f"{s}://" for s in URI_SCHEMES)
            raise StoreError(
                f"{arg} {storage}: unknown URI scheme '{scheme}://'; give a folder or a URI of {known}"
            )
        if scheme.lower() != "file":
            return
        storage = "/" + rest.lstrip("/")
    path = probe_in = os.path.abspath(os.path.expanduser(storage))
    while not os.path.exists(probe_in):  # the nearest existing place at or above it
        probe_in = os.path.dirname(probe_in)
    if probe_in == path and not os.path.isdir(path):
        raise StoreError(
            f"{arg} {storage}: is a file, not a folder; give a folder (created when missing) or a bucket URI"
        )
    if not os.path.isdir(probe_in):
        raise StoreError(f"{arg} {storage}: {probe_in} is a file, so the store folder cannot be created")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".hsjp-write-check-", dir=probe_in))
    except OSError as exc:
        what = "write into" if probe_in == path else f"create the store folder under {probe_in}"
        raise StoreError(f"{arg} {storage}: cannot {what} ({exc.strerror or exc})") from None


class Store:
    """Read / write access to one store root: a local path, a URI (`s3://bucket/prefix?region=...`; the
    query string carries pyarrow's options and is kept on every URI handed to Ray), or a path inside a
    given `pyarrow.fs` filesystem (`Store("bucket/prefix", filesystem=S3FileSystem(...))`, as Ray's
    `RunConfig(storage_path, storage_filesystem)` takes it). `create=False` opens it to read only (the
    reports, `status`): a missing root is not created, and reads find nothing there."""

    def __init__(
        self, root: str | os.PathLike[str], filesystem: pafs.FileSystem | None = None, *, create: bool = True
    ):
        root = str(root)
        self.query = ""
        self.filesystem = filesystem  # the caller's (None: derived from `root`)
        if filesystem is not None:
            if "://" in root:
                raise StoreError(
                    f"store {root!r}: give a path inside the filesystem, not a URI, with filesystem="
                )
            self.fs, self.base, self.uri = filesystem, root, root.rstrip("/")
        elif "://" in root:
            prefix, _, self.query = root.partition("?")
            try:
                self.fs, self.base = pafs.FileSystem.from_uri(root)
            except (pa_lib.ArrowInvalid, pa_lib.ArrowNotImplementedError, ValueError) as exc:
                raise _cannot_open(root, exc) from exc
            self.uri = prefix.rstrip("/")
        else:
            self.fs, self.base = pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(root))
            self.uri = self.base
        self.base = self.base.rstrip("/")
        try:
            if create:
                self.fs.create_dir(self.base, recursive=True)
        except (OSError, ValueError, NotImplementedError) as exc:  # pyarrow's ArrowInvalid is a ValueError
            raise _cannot_open(root, exc) from exc

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def __repr__(self) -> str:
        return f"Store({self.display})"

    @property
    def display(self) -> str:  # as shown to a person: without the query string (it may hold keys)
        return self.uri

    # ----------------------------------------------------------------------------------- paths
    def path(self, *parts: str) -> str:  # inside the filesystem (no scheme)
        return "/".join([self.base, *parts])

    def uri_of(self, *parts: str) -> str:
        """URI (or local path) of a location, the query string kept: pyarrow / Ray open the same
        filesystem with the same options."""
        joined = "/".join([self.uri, *parts])
        return f"{joined}?{self.query}" if self.query else joined

    def ray_storage(self, *parts: str) -> tuple[str, pafs.FileSystem | None]:
        """(storage_path, storage_filesystem) of a location for Ray's `RunConfig`."""
        if self.filesystem is not None:
            return self.path(*parts), self.filesystem
        return self.uri_of(*parts), None

    def stage_path(self, stage_id: str, *parts: str) -> str:
        return self.path(*stage_parts(stage_id, *parts))

    def study_path(self, name: str, *parts: str) -> str:
        return self.path(*study_parts(name, *parts))

    # ----------------------------------------------------------------------------------- bytes
    def exists(self, path: str) -> bool:
        return bool(self.fs.get_file_info(path).type != pafs.FileType.NotFound)

    def write_bytes(self, path: str, data: bytes) -> None:
        """Atomic write: temp file in the same folder, then rename."""
        self.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        with self.fs.open_output_stream(tmp) as f:
            f.write(data)
        self.fs.move(tmp, path)

    def read_bytes(self, path: str) -> bytes | None:
        if not self.exists(path):
            return None
        with self.fs.open_input_stream(path) as f:
            data: bytes = f.read()
        return data

    def write_json(self, path: str, obj: Any) -> None:
        self.write_bytes(path, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())

    def read_text(self, path: str) -> str | None:
        data = self.read_bytes(path)
        return data.decode(errors="replace") if data is not None else None

    def read_json(self, path: str) -> Any | None:  # `format.parse_json` of the file
        return parse_json(self.read_bytes(path), path)

    def read_json_or_warn(self, path: str, consequence: str) -> Any | None:  # `format.parse_json_or_warn`
        return parse_json_or_warn(self.read_bytes(path), path, consequence)

    def list_dirs(self, *parts: str) -> list[str]:
        """The names of the folders in a folder of the store (none when it is absent)."""
        path = self.path(*parts)
        if self.fs.get_file_info(path).type != pafs.FileType.Directory:
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(path, recursive=False))
        return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)

    def append_line(self, path: str, line: str) -> None:
        """Append a line (local: O_APPEND; object stores: read-modify-write of the whole object)."""
        if self.is_local:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "a") as f:
                f.write(line.rstrip("\n") + "\n")
        else:
            old = self.read_bytes(path) or b""
            self.write_bytes(path, old + line.rstrip("\n").encode() + b"\n")

    def move_dir(self, src: str, dst: str) -> None:
        """Move a folder (a rename on a filesystem; a copy then a delete on an object store)."""
        self.fs.create_dir(dst.rsplit("/", 1)[0], recursive=True)
        try:
            self.fs.move(src, dst)
        except (OSError, NotImplementedError):  # S3: pyarrow moves files, not folders
            pafs.copy_files(src, dst, source_filesystem=self.fs, destination_filesystem=self.fs)
            self.fs.delete_dir(src)

    def remove(self, path: str) -> None:
        info = self.fs.get_file_info(path)
        if info.type == pafs.FileType.Directory:
            self.fs.delete_dir(path)
        elif info.type == pafs.FileType.File:
            self.fs.delete_file(path)

    # ---------------------------------------------------------------------------------- stages
    def write_stage_config(self, stage_id: str, config: dict[str, Any]) -> None:
        """config.json: the stage's `StageRecord` (`orchestrator.schedule.stage.stage_record`)."""
        self.write_json(self.stage_path(stage_id, CONFIG_FILE), config)

    def read_stage_record(self, stage_id: str) -> StageRecord | None:
        """`format.read_stage_record` of the stage's files; a corrupt config.json is a StoreError."""
        path = self.stage_path(stage_id, CONFIG_FILE)
        config = self.read_json(path)
        legacy = None
        if config is None:  # only an older store's no-work / skipped stage has a result and no config
            legacy = self.read_json_or_warn(
                self.stage_path(stage_id, RESULT_FILE), "the stage counts as not started"
            )
        return read_stage_record(config, legacy, path)

    def append_metrics(self, stage_id: str, metrics: dict[str, Any]) -> None:
        self.append_line(self.stage_path(stage_id, METRICS_FILE), json.dumps(metrics, default=str))

    def read_metrics(self, stage_id: str) -> list[dict[str, Any]]:
        path = self.stage_path(stage_id, METRICS_FILE)
        return parse_json_lines(self.read_bytes(path), path)

    def save_weights(self, stage_id: str, state_dict: dict[str, torch.Tensor]) -> str:
        import torch

        buf = io.BytesIO()
        torch.save(state_dict, buf)
        path = self.stage_path(stage_id, WEIGHTS_FILE)
        self.write_bytes(path, buf.getvalue())
        return path

    def load_weights(self, stage_id: str) -> dict[str, torch.Tensor]:
        import torch

        path = self.stage_path(stage_id, WEIGHTS_FILE)
        data = self.read_bytes(path)
        if data is None:
            raise StoreError(f"{path}: output weights missing")
        try:
            state: dict[str, torch.Tensor] = torch.load(
                io.BytesIO(data), map_location="cpu", weights_only=True
            )
            return state
        except Exception as exc:
            raise StoreError(f"{path}: unreadable weights ({exc})") from exc

    def write_result(self, stage_id: str, result: dict[str, Any]) -> None:
        """Publish a finished stage: result.json (`ResultRecord`) with its id, time and version."""
        result = {
            "schema_version": SCHEMA_VERSION,
            **result,
            "stage_id": stage_id,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        self.write_json(self.stage_path(stage_id, RESULT_FILE), result)

    def read_result(
        self, stage_id: str, consequence: str = "the stage will be recomputed"
    ) -> ResultRecord | None:
        """result.json in the current schema; None when not finished or corrupt (a warning naming it and
        `consequence`: the stage is redone rather than trusted)."""
        path = self.stage_path(stage_id, RESULT_FILE)
        obj = self.read_json_or_warn(path, consequence)
        return None if obj is None else read_result_record(obj, path)

    def record_error(self, stage_id: str, text: str) -> None:
        self.write_bytes(self.stage_path(stage_id, ERROR_FILE), text.encode())

    def read_error(self, stage_id: str) -> str | None:
        return self.read_text(self.stage_path(stage_id, ERROR_FILE))

    def clear_error(self, stage_id: str) -> None:
        self.remove(self.stage_path(stage_id, ERROR_FILE))

    def list_stages(self) -> list[str]:
        """The stage folders of the store (other names under stages/ are not stages: ignored)."""
        return [name for name in self.list_dirs(STAGES_DIR) if is_stage_id(name)]

    def list_studies(self) -> list[str]:
        """The study folders of the store (names that are not valid study names are ignored)."""
        return [name for name in self.list_dirs(STUDIES_DIR) if is_study_name(name)]

    # --------------------------------------------------------------------------------- studies
    def write_study(self, name: str, study_text: str, plan: dict[str, Any]) -> None:
        self.write_bytes(self.study_path(name, STUDY_FILE), study_text.encode())
        self.write_json(self.study_path(name, PLAN_FILE), plan)


def _cannot_open(root: str, exc: Exception) -> StoreError:
    redacted = root.partition("?")[0] + ("?..." if "?" in root else "")  # the query may carry access keys
    return StoreError(f"store {redacted}: cannot be opened ({str(exc).splitlines()[0]})")


SHARED_STORAGE_ENV = "HSJP_SHARED_STORAGE"  # 1: a local --storage path is shared by every node
SHARED_FS_TYPES = frozenset(  # /proc/mounts types taken as shared between hosts
    {"nfs", "nfs4", "cifs", "smb3", "lustre", "gpfs", "beegfs", "ceph", "glusterfs", "fuse.glusterfs"}
)


def mount_fs_type(path: str, mounts_text: str | None = None) -> str | None:
    """Filesystem type of the mount holding `path` (longest mount-point prefix in /proc/mounts)."""
    if mounts_text is None:
        try:
            with open("/proc/mounts") as f:
                mounts_text = f.read()
        except OSError:
            return None
    path = os.path.realpath(path)
    best, fs_type = "", None
    for line in mounts_text.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and len(point) > len(best):
            best, fs_type = point, fields[2]
    return fs_type


def check_storage_for_cluster(
    store: Store, nodes: list[dict[str, Any]], *, shared: bool | None = None, mounts_text: str | None = None
) -> None:
    """Refuse a node-local store on a cluster of several hosts (`nodes`: `ray.nodes()`; docs/ray.md §6:
    every node reads and writes the store). A URI store, a single host, a shared filesystem type or
    `shared` / $HSJP_SHARED_STORAGE=1 pass."""
    if not store.is_local:
        return
    hosts = sorted({str(n.get("NodeManagerAddress") or n.get("NodeID")) for n in nodes if n.get("Alive")})
    if len(hosts) <= 1:
        return
    if shared is None:
        shared = os.environ.get(SHARED_STORAGE_ENV, "").strip().lower() in ("1", "true", "yes")
    fs_type = mount_fs_type(store.base, mounts_text)
    if shared or fs_type in SHARED_FS_TYPES:
        return
    shown = ", ".join(hosts[:4]) + (", ..." if len(hosts) > 4 else "")
    raise StoreError(
        f"--storage {store.base} is a local path ({fs_type or 'unknown'} filesystem) but the Ray cluster "
        f"spans {len(hosts)} hosts ({shown}): every node must read and write the same store. Give a "
        f"bucket URI (s3://..., gs://...) or a shared filesystem mounted at the same path on every node; "
        f"if {store.base} is such a mount, set {SHARED_STORAGE_ENV}=1"
    )
