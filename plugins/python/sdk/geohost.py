"""Helpers for writing a Geohost replicable type in Python.

A type written in Python is a module with a class ``Replicable`` implementing
the ``geohost:replicable@0.2`` world ``replicable-type`` (``wit/replicable.wit``), turned into a
WebAssembly component by componentize-py (``cargo xtask plugins`` does it).
This module is the Python counterpart of the Rust SDK (``plugins/sdk``):

- ``Col``: one typed column of a batch, read record by record;
- ``paths``, ``decisions``, ``derived``: answers built record by record, where
  raising ``Refused`` (or any ``ValueError``) refuses that record alone;
- ``hashed_path`` and ``sha256_hex``: GitLab's ``Gitlab::HashedPath``;
- ``project_scope`` and ``instance_scope``: GitLab's selective-sync rules,
  looking each project of a batch up once through ``site.projects``.

A type gets no files, sockets, environment, real clock or randomness (see
docs/decisions.md): ``print`` goes to the host's log, and a traceback's last
line reaches the operator in the error of a failed call.
"""

import hashlib
from typing import Callable, List, Optional

from wit_world.imports import site
from wit_world.imports import types as t

FILE_STORE_LOCAL = 1
"""GitLab's ``file_store`` for blobs on local disk."""
FILE_STORE_REMOTE = 2
"""GitLab's ``file_store`` for blobs in object storage."""


class Refused(ValueError):
    """Raised by a per-record function: the record is refused with this message."""


def sha256_hex(data) -> str:
    """Lowercase hex SHA-256 of ``data`` (``str`` is encoded as UTF-8)."""
    if isinstance(data, str):
        data = data.encode()
    return hashlib.sha256(data).hexdigest()


def hashed_path(root_hash: str, *components: str) -> str:
    """``Gitlab::HashedPath.new(*components, root_hash:).to_s``:
    ``h[0:2]/h[2:4]/h/<components>`` with ``h`` the SHA-256 of ``root_hash``."""
    h = sha256_hex(root_hash)
    return "/".join([h[0:2], h[2:4], h, *[str(c) for c in components]])


_KINDS = {
    t.ColumnValues_Int: "integers",
    t.ColumnValues_Text: "text",
    t.ColumnValues_Boolean: "booleans",
    t.ColumnValues_Timestamp: "timestamps",
    t.ColumnValues_Binary: "bytes",
}


class Col:
    """Column ``index`` of ``batch``, named ``name`` in errors, expected to
    hold ``kind`` (``t.ColumnValues_Int``, ``t.ColumnValues_Text``, …)."""

    def __init__(self, batch: t.Batch, index: int, name: str, kind):
        self.name = name
        self.error: Optional[str] = None
        self.values: List = []
        self.nulls = set()
        if index >= len(batch.columns):
            self.error = f"the batch is missing column `{name}` (position {index})"
            return
        column = batch.columns[index]
        if not isinstance(column.values, kind):
            self.error = (
                f"column `{name}` must hold {_KINDS[kind]}, "
                f"got {_KINDS.get(type(column.values), '?')}"
            )
            return
        self.values = column.values.value
        self.nulls = set(column.nulls)

    def opt(self, row: int):
        """The value of record ``row``, ``None`` for NULL."""
        if self.error is not None:
            raise Refused(self.error)
        if row in self.nulls:
            return None
        return self.values[row]

    def get(self, row: int):
        """The value of record ``row``; refuses the record if it is NULL."""
        value = self.opt(row)
        if value is None:
            raise Refused(f"column `{self.name}` is NULL")
        return value


def ints(batch, index, name) -> Col:
    return Col(batch, index, name, t.ColumnValues_Int)


def texts(batch, index, name) -> Col:
    return Col(batch, index, name, t.ColumnValues_Text)


def _answer(batch: t.Batch, one: Callable[[int], object], placeholder):
    values, errors = [], []
    for row in range(len(batch.ids)):
        try:
            values.append(one(row))
        except ValueError as error:
            values.append(placeholder)
            errors.append(t.RowError(row, str(error)))
    return values, errors


def paths(batch: t.Batch, path: Callable[[int], str]) -> t.Paths:
    """``blob-paths``' answer: ``path(row)`` for each record."""
    return t.Paths(*_answer(batch, path, ""))


def decisions(batch: t.Batch, decide: Callable[[int], bool]) -> t.Decisions:
    """``in-scope``'s answer: ``decide(row)`` for each record."""
    return t.Decisions(*_answer(batch, decide, False))


def derived(batch: t.Batch, derive: Callable[[int], list], kinds: list) -> t.Derived:
    """``derive``'s answer: ``derive(row)`` gives the derived columns of a
    record in table order (``None`` for NULL); ``kinds`` gives each column's
    ``t.ColumnValues_*`` class."""
    placeholders = {
        t.ColumnValues_Int: 0,
        t.ColumnValues_Timestamp: 0,
        t.ColumnValues_Text: "",
        t.ColumnValues_Boolean: False,
        t.ColumnValues_Binary: b"",
    }
    rows, errors = _answer(batch, derive, None)
    columns = []
    for c, kind in enumerate(kinds):
        values, nulls = [], []
        for row, record in enumerate(rows):
            value = None if record is None else record[c]
            if value is None:
                nulls.append(row)
                value = placeholders[kind]
            values.append(value)
        columns.append(t.ColumnData(kind(values), nulls))
    return t.Derived(columns, errors)


class Projects:
    """The projects of a batch, looked up with one ``site.projects`` call."""

    def __init__(self, ids):
        self.index = {}
        unique = []
        for project_id in ids:
            if project_id not in self.index:
                self.index[project_id] = len(unique)
                unique.append(project_id)
        self.columns = site.projects(unique)

    def ancestry_and_storage(self, project_id):
        """``(ancestry, storage)`` of a known project, ``None`` otherwise."""
        i = self.index.get(project_id)
        c = self.columns
        if i is None or not c.found[i]:
            return None
        start = c.ancestry_ends[i - 1] if i > 0 else 0
        return c.ancestry[start:c.ancestry_ends[i]], c.storages[c.storage[i]]


def project_selected(settings: t.SyncSettings, project) -> bool:
    """Whether a project (``(ancestry, storage)`` or ``None``) is selected."""
    if project is None:
        return False
    ancestry, storage = project
    selective = settings.selective_sync
    if isinstance(selective, t.SelectiveSync_Namespaces):
        return any(ns in selective.value for ns in ancestry)
    if isinstance(selective, t.SelectiveSync_Shards):
        return storage in selective.value
    return True


def file_store_admitted(settings: t.SyncSettings, file_store) -> bool:
    """Object-stored blobs only when the site syncs object storage."""
    return file_store != FILE_STORE_REMOTE or settings.sync_object_storage


def project_scope(settings, batch, project_index, file_store_index=None) -> t.Decisions:
    """GitLab's rule for project-owned records: the project selected (by
    namespace with descendants, or by shard), object storage only with
    ``sync_object_storage``. Unknown projects are out of scope."""
    project_ids = ints(batch, project_index, "project_id")
    file_stores = None if file_store_index is None else ints(batch, file_store_index, "file_store")
    ids = [v for row, v in enumerate(project_ids.values) if row not in project_ids.nulls]
    projects = Projects(ids)
    selected = {}

    def decide(row):
        project_id = project_ids.get(row)
        file_store = None if file_stores is None else file_stores.opt(row)
        if project_id not in selected:
            selected[project_id] = project_selected(
                settings, projects.ancestry_and_storage(project_id)
            )
        return file_store_admitted(settings, file_store) and selected[project_id]

    return decisions(batch, decide)


def instance_scope(settings, batch, file_store_index=None) -> t.Decisions:
    """Records that belong to no project: all selected, object storage aside."""
    file_stores = None if file_store_index is None else ints(batch, file_store_index, "file_store")
    return decisions(
        batch,
        lambda row: file_store_admitted(
            settings, None if file_stores is None else file_stores.opt(row)
        ),
    )


def column(name, column_type, nullable, source, default=None, max_length=None) -> t.Column:
    """One column of the model table."""
    return t.Column(name, column_type, nullable, default, max_length, source)


def timestamps() -> list:
    """GitLab's ``created_at`` and ``updated_at``, set by the host."""
    return [
        column("created_at", t.ColumnType.TIMESTAMP, False, t.ColumnSource.CREATED_AT),
        column("updated_at", t.ColumnType.TIMESTAMP, False, t.ColumnSource.UPDATED_AT),
    ]


def file_store() -> t.Column:
    """GitLab's ``file_store``: 1 local (the default), 2 object storage."""
    return column(
        "file_store", t.ColumnType.INTEGER, True, t.ColumnSource.FILE_STORE, t.Value_Int(1)
    )
